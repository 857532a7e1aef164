//! The event-id digest (`digest_of`: BLAKE2b, 8-byte digest, no key) of four ids at once, one in
//! each 64-bit lane of AVX2 registers: the same rounds as `blake2b8_short`, a quarter of the
//! instructions per id. `apply` takes the digests of a chunk of events this way where the CPU has
//! AVX2 (`digests`); the values are the scalar ones (checkpoints hold them: tests compare them
//! with hashlib's at every length).

/// The digests of `msgs` into `out` (the same length): four at a time where AVX2 is present
/// (`avx2`, from `is_x86_feature_detected!`), ids longer than a block one at a time.
pub(crate) fn digests(msgs: &[&[u8]], out: &mut [u64], avx2: bool) {
    debug_assert_eq!(msgs.len(), out.len());
    if !avx2 {
        for (m, d) in msgs.iter().zip(out.iter_mut()) {
            *d = super::digest_of_bytes(m);
        }
        return;
    }
    // the ids of at most one block, four by four; the rest alone
    let mut lanes = [0usize; 4];
    let mut n = 0;
    for (i, m) in msgs.iter().enumerate() {
        if m.len() > 128 {
            out[i] = super::digest_of_bytes(m);
            continue;
        }
        lanes[n] = i;
        n += 1;
        if n == 4 {
            four(msgs, &lanes, 4, out);
            n = 0;
        }
    }
    if n > 0 {
        four(msgs, &lanes, n, out);
    }
}

/// The digests of `msgs[lanes[k]]` for `k < n` (n <= 4, each at most 128 bytes).
fn four(msgs: &[&[u8]], lanes: &[usize; 4], n: usize, out: &mut [u64]) {
    let mut words = [[0u64; 4]; 16];
    let mut lens = [0u64; 4];
    for k in 0..n {
        let msg = msgs[lanes[k]];
        let mut block = [0u8; 128];
        block[..msg.len()].copy_from_slice(msg);
        for (j, w) in words.iter_mut().enumerate() {
            let c = &block[8 * j..8 * j + 8];
            w[k] = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        }
        lens[k] = msg.len() as u64;
    }
    let d = lanes4(&words, lens);
    for k in 0..n {
        out[lanes[k]] = d[k];
    }
}

#[cfg(target_arch = "x86_64")]
fn lanes4(words: &[[u64; 4]; 16], lens: [u64; 4]) -> [u64; 4] {
    // SAFETY: `digests` takes this path only where AVX2 was detected.
    unsafe { x86::lanes4(words, lens) }
}

#[cfg(not(target_arch = "x86_64"))]
fn lanes4(words: &[[u64; 4]; 16], lens: [u64; 4]) -> [u64; 4] {
    let _ = (words, lens);
    unreachable!("AVX2 is only detected on x86_64")
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::B2_IV;
    use std::arch::x86_64::*;

    macro_rules! ld {
        ($w:expr) => {
            _mm256_loadu_si256($w.as_ptr() as *const __m256i)
        };
    }

    macro_rules! splat {
        ($x:expr) => {
            _mm256_set1_epi64x($x as i64)
        };
    }

    // The G function on four lanes: rotations by 32 (dword swap), 24 and 16 (byte shuffles) and
    // 63 (a shift and an add), as in `b2_g!`.
    macro_rules! g4 {
        ($v:ident, $r24:ident, $r16:ident, $a:expr, $b:expr, $c:expr, $d:expr, $x:expr, $y:expr) => {
            $v[$a] = _mm256_add_epi64(_mm256_add_epi64($v[$a], $v[$b]), $x);
            $v[$d] = _mm256_shuffle_epi32(_mm256_xor_si256($v[$d], $v[$a]), 0b10_11_00_01);
            $v[$c] = _mm256_add_epi64($v[$c], $v[$d]);
            $v[$b] = _mm256_shuffle_epi8(_mm256_xor_si256($v[$b], $v[$c]), $r24);
            $v[$a] = _mm256_add_epi64(_mm256_add_epi64($v[$a], $v[$b]), $y);
            $v[$d] = _mm256_shuffle_epi8(_mm256_xor_si256($v[$d], $v[$a]), $r16);
            $v[$c] = _mm256_add_epi64($v[$c], $v[$d]);
            let t = _mm256_xor_si256($v[$b], $v[$c]);
            $v[$b] = _mm256_or_si256(_mm256_srli_epi64(t, 63), _mm256_add_epi64(t, t));
        };
    }

    macro_rules! round4 {
        ($v:ident, $m:ident, $r24:ident, $r16:ident, $s0:expr, $s1:expr, $s2:expr, $s3:expr,
         $s4:expr, $s5:expr, $s6:expr, $s7:expr, $s8:expr, $s9:expr, $s10:expr, $s11:expr,
         $s12:expr, $s13:expr, $s14:expr, $s15:expr) => {
            g4!($v, $r24, $r16, 0, 4, 8, 12, $m[$s0], $m[$s1]);
            g4!($v, $r24, $r16, 1, 5, 9, 13, $m[$s2], $m[$s3]);
            g4!($v, $r24, $r16, 2, 6, 10, 14, $m[$s4], $m[$s5]);
            g4!($v, $r24, $r16, 3, 7, 11, 15, $m[$s6], $m[$s7]);
            g4!($v, $r24, $r16, 0, 5, 10, 15, $m[$s8], $m[$s9]);
            g4!($v, $r24, $r16, 1, 6, 11, 12, $m[$s10], $m[$s11]);
            g4!($v, $r24, $r16, 2, 7, 8, 13, $m[$s12], $m[$s13]);
            g4!($v, $r24, $r16, 3, 4, 9, 14, $m[$s14], $m[$s15]);
        };
    }

    /// `blake2b8_short` of four blocks (word `j` of lane `k` in `words[j][k]`, message lengths
    /// in `lens`), as `u64::from_be_bytes` of each digest.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn lanes4(words: &[[u64; 4]; 16], lens: [u64; 4]) -> [u64; 4] {
        let m = [
            ld!(words[0]), ld!(words[1]), ld!(words[2]), ld!(words[3]),
            ld!(words[4]), ld!(words[5]), ld!(words[6]), ld!(words[7]),
            ld!(words[8]), ld!(words[9]), ld!(words[10]), ld!(words[11]),
            ld!(words[12]), ld!(words[13]), ld!(words[14]), ld!(words[15]),
        ];
        // byte k of each 64-bit word from byte k + 3 (k + 2) of the word: rotations right by
        // 24 (16) bits
        let r24 = _mm256_setr_epi8(
            3, 4, 5, 6, 7, 0, 1, 2, 11, 12, 13, 14, 15, 8, 9, 10,
            3, 4, 5, 6, 7, 0, 1, 2, 11, 12, 13, 14, 15, 8, 9, 10,
        );
        let r16 = _mm256_setr_epi8(
            2, 3, 4, 5, 6, 7, 0, 1, 10, 11, 12, 13, 14, 15, 8, 9,
            2, 3, 4, 5, 6, 7, 0, 1, 10, 11, 12, 13, 14, 15, 8, 9,
        );
        // parameter block: digest length 8, key length 0, fanout 1, depth 1
        let h0 = B2_IV[0] ^ 0x0101_0008;
        let mut v = [
            splat!(h0), splat!(B2_IV[1]), splat!(B2_IV[2]), splat!(B2_IV[3]),
            splat!(B2_IV[4]), splat!(B2_IV[5]), splat!(B2_IV[6]), splat!(B2_IV[7]),
            splat!(B2_IV[0]), splat!(B2_IV[1]), splat!(B2_IV[2]), splat!(B2_IV[3]),
            _mm256_xor_si256(splat!(B2_IV[4]), ld!(lens)), splat!(B2_IV[5]),
            splat!(!B2_IV[6]), splat!(B2_IV[7]),
        ];
        b2_rounds!(round4!(v, m, r24, r16));
        // the digest is h[0]'s first 8 bytes, little-endian
        let h = _mm256_xor_si256(_mm256_xor_si256(splat!(h0), v[0]), v[8]);
        let mut out = [0u64; 4];
        _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, h);
        [out[0].swap_bytes(), out[1].swap_bytes(), out[2].swap_bytes(), out[3].swap_bytes()]
    }
}
