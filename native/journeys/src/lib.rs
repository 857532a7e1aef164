//! Experiment (issue 4): the journeys stage (`processors/journeys.py`, `JourneyProcessor`) over
//! native per-customer state.
//!
//! Per customer: the dedup ring as 8-byte digests, the base and current cursors, the kept
//! history and the counters, in Rust structs; touchpoints, channels, segments and Markov states
//! are interned codes. Python objects stay only at the boundary: events are read from the
//! `ResolvedEvent`s given, and the outputs are the steps (a `StepBatch` of Rust records, which
//! the transition counter counts as they are and which reads as the same `Step` records:
//! `steps.rs`), duplicate events and `(event, watermark, frontier)` for late ones. Event ids, session ids and customer
//! ids are kept as references to Python strings, because every step carries them out again.
//!
//! The index of open journeys by deadline bucket stays a Python dict of Python sets, changed by
//! the same adds and discards as in Python: `expire` walks those sets, and their iteration order
//! is the order of a batch's expiry steps (part of the outputs that must be equal).
//!
//! The semantics must be exactly the Python ones, to the order of the outputs:
//! `bench/bench_journeys_native.py --fingerprint` and `bench/bench_chain.py`'s fingerprint
//! through it check that.

use blake2::digest::consts::U8;
use blake2::{Blake2b, Digest};
use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyDict, PyList, PySet, PyString, PyTuple};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::ptr::NonNull;
use std::cell::RefCell;
use std::sync::Arc;

/// BLAKE2b's twelve rounds: `$round!(args, s0, .., s15)` with each round's message schedule
/// (rounds 10 and 11 take those of 0 and 1 again). For the scalar digest (`b2_round!`) and the
/// four-lane one (`b2x4`).
macro_rules! b2_rounds {
    ($round:ident!($($a:tt)*)) => {
        $round!($($a)*, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        $round!($($a)*, 14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3);
        $round!($($a)*, 11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4);
        $round!($($a)*, 7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8);
        $round!($($a)*, 9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13);
        $round!($($a)*, 2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9);
        $round!($($a)*, 12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11);
        $round!($($a)*, 13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10);
        $round!($($a)*, 6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5);
        $round!($($a)*, 10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0);
        $round!($($a)*, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        $round!($($a)*, 14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3);
    };
}

mod b2x4;
mod counter;
mod funnels;
mod heap;
mod ordered;
mod paths;
mod steps;
mod pending;

use pending::prefetch;

/// How many events `apply` asks the memory for at once (`NativeJourneyCore::warm`).
const WARM: usize = 16;

const EMPTY: u32 = 0; // ""
const START: u32 = 1;
const CONVERSION: u32 = 2;
const NULL: u32 = 3;
const DUE_BUCKET_MS: i64 = 3_600_000;

/// FxHash over bytes: short keys (ids, touchpoints) hashed in a few instructions.
#[derive(Default)]
struct Fx(u64);

impl Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().unwrap());
            h = (h.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
        for &b in chunks.remainder() {
            h = (h.rotate_left(5) ^ b as u64).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
        self.0 = h;
    }
    fn write_u8(&mut self, i: u8) {
        self.0 = (self.0.rotate_left(5) ^ i as u64).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<Fx>>;

/// A strong reference to a Python string, held only while the GIL is (every method of the core
/// runs under it): increments and decrements without PyO3's thread-local GIL check.
struct PStr(NonNull<ffi::PyObject>);

// SAFETY: only touched under the GIL (the core is a pyclass; its methods hold the GIL).
unsafe impl Send for PStr {}

impl PStr {
    fn of(b: &Bound<'_, PyString>) -> PStr {
        PStr::take(b.clone())
    }

    fn take(b: Bound<'_, PyString>) -> PStr {
        PStr(NonNull::new(b.into_ptr()).unwrap())
    }

    fn ptr(&self) -> *mut ffi::PyObject {
        self.0.as_ptr()
    }

    /// A new strong reference, for a slot that steals it.
    fn new_ref(&self) -> *mut ffi::PyObject {
        unsafe { ffi::Py_INCREF(self.ptr()) };
        self.ptr()
    }

    fn text(&self) -> &str {
        unsafe {
            let mut n: ffi::Py_ssize_t = 0;
            let p = ffi::PyUnicode_AsUTF8AndSize(self.ptr(), &mut n);
            if p.is_null() {
                ffi::PyErr_Clear();
                return "";
            }
            std::str::from_utf8_unchecked(std::slice::from_raw_parts(p as *const u8, n as usize))
        }
    }

    fn bound<'py>(&self, py: Python<'py>) -> Bound<'py, PyString> {
        unsafe { Bound::from_borrowed_ptr(py, self.ptr()).downcast_into_unchecked() }
    }

    fn obj(&self, py: Python<'_>) -> PyObject {
        self.bound(py).into_any().unbind()
    }
}

impl Clone for PStr {
    fn clone(&self) -> PStr {
        unsafe { ffi::Py_INCREF(self.ptr()) };
        PStr(self.0)
    }
}

impl Drop for PStr {
    fn drop(&mut self) {
        unsafe { ffi::Py_DECREF(self.ptr()) };
    }
}

/// The BLAKE2b digest (8 bytes) of an event id, big-endian: integer order is byte order.
/// Ids of up to 128 bytes (one block: all of them in practice) take `blake2b8_short`.
fn digest_of(id: &str) -> u64 {
    digest_of_bytes(id.as_bytes())
}

/// `digest_of` the UTF-8 bytes of an id.
fn digest_of_bytes(id: &[u8]) -> u64 {
    if let Some(d) = blake2b8_short(id) {
        return d;
    }
    let mut h = Blake2b::<U8>::new();
    h.update(id);
    u64::from_be_bytes(h.finalize().into())
}

/// Whether the CPU runs AVX2 (`b2x4`'s four digests at once).
fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

const B2_IV: [u64; 8] = [
    0x6a09_e667_f3bc_c908,
    0xbb67_ae85_84ca_a73b,
    0x3c6e_f372_fe94_f82b,
    0xa54f_f53a_5f1d_36f1,
    0x510e_527f_ade6_82d1,
    0x9b05_688c_2b3e_6c1f,
    0x1f83_d9ab_fb41_bd6b,
    0x5be0_cd19_137e_2179,
];

macro_rules! b2_g {
    ($v:ident, $a:expr, $b:expr, $c:expr, $d:expr, $x:expr, $y:expr) => {
        $v[$a] = $v[$a].wrapping_add($v[$b]).wrapping_add($x);
        $v[$d] = ($v[$d] ^ $v[$a]).rotate_right(32);
        $v[$c] = $v[$c].wrapping_add($v[$d]);
        $v[$b] = ($v[$b] ^ $v[$c]).rotate_right(24);
        $v[$a] = $v[$a].wrapping_add($v[$b]).wrapping_add($y);
        $v[$d] = ($v[$d] ^ $v[$a]).rotate_right(16);
        $v[$c] = $v[$c].wrapping_add($v[$d]);
        $v[$b] = ($v[$b] ^ $v[$c]).rotate_right(63);
    };
}

macro_rules! b2_round {
    ($v:ident, $m:ident, $s0:expr, $s1:expr, $s2:expr, $s3:expr, $s4:expr, $s5:expr, $s6:expr,
     $s7:expr, $s8:expr, $s9:expr, $s10:expr, $s11:expr, $s12:expr, $s13:expr, $s14:expr,
     $s15:expr) => {
        b2_g!($v, 0, 4, 8, 12, $m[$s0], $m[$s1]);
        b2_g!($v, 1, 5, 9, 13, $m[$s2], $m[$s3]);
        b2_g!($v, 2, 6, 10, 14, $m[$s4], $m[$s5]);
        b2_g!($v, 3, 7, 11, 15, $m[$s6], $m[$s7]);
        b2_g!($v, 0, 5, 10, 15, $m[$s8], $m[$s9]);
        b2_g!($v, 1, 6, 11, 12, $m[$s10], $m[$s11]);
        b2_g!($v, 2, 7, 8, 13, $m[$s12], $m[$s13]);
        b2_g!($v, 3, 4, 9, 14, $m[$s14], $m[$s15]);
    };
}

/// BLAKE2b with an 8-byte digest and no key (RFC 7693) of a message of at most one block (128
/// bytes), as `u64::from_be_bytes` of the digest: one compression, the rounds unrolled with
/// their message schedule as constants. None for a longer message.
fn blake2b8_short(msg: &[u8]) -> Option<u64> {
    match msg.len() {
        0..=16 => Some(b2_one::<2>(msg)),
        17..=32 => Some(b2_one::<4>(msg)),
        33..=64 => Some(b2_one::<8>(msg)),
        65..=128 => Some(b2_one::<16>(msg)),
        _ => None,
    }
}

#[inline(always)]
fn b2_one<const W: usize>(msg: &[u8]) -> u64 {
    let mut block = [0u8; 128];
    block[..msg.len()].copy_from_slice(msg);
    let mut m = [0u64; 16];
    for k in 0..W {
        let c = &block[8 * k..8 * k + 8];
        m[k] = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
    }
    // parameter block: digest length 8, key length 0, fanout 1, depth 1
    let h0 = B2_IV[0] ^ 0x0101_0008;
    let mut v = [
        h0, B2_IV[1], B2_IV[2], B2_IV[3], B2_IV[4], B2_IV[5], B2_IV[6], B2_IV[7],
        B2_IV[0], B2_IV[1], B2_IV[2], B2_IV[3],
        B2_IV[4] ^ msg.len() as u64, B2_IV[5], !B2_IV[6], B2_IV[7],
    ];
    b2_rounds!(b2_round!(v, m));
    // the digest is h[0]'s first 8 bytes, little-endian
    (h0 ^ v[0] ^ v[8]).swap_bytes()
}

fn same_str(a: &PStr, b: &PStr) -> bool {
    a.ptr() == b.ptr() || a.text() == b.text()
}

/// One applied event as the history keeps it (`HistoryEntry`).
#[derive(Clone)]
struct Entry {
    ts: i64,
    dig: u64,
    eid: PStr,
    tp: u32,
    ch: u32,
    given: Option<PStr>,
    seg: u32,
    rev: f64, // 0 is Python's int 0 (`revenue or 0`)
}

/// The walk state after some prefix of a customer's events (`Cursor`).
#[derive(Clone)]
struct Cursor {
    last_ts: i64,
    is_open: bool,
    src: u32,
    prev2: u32,
    session: PStr,
    sess_start: i64,
    jno: i64,
    ch: u32,
    seg: u32,
}

/// One Markov step (`Step`), before it becomes a Python record.
#[derive(Clone)]
struct RStep {
    cid: PStr,
    seg: u32,
    ch: u32,
    tp: u32,
    src: u32,
    dst: u32,
    prev2: u32,
    gap: i64,
    ts: i64,
    session: PStr,
    is_new: bool,
    rev: f64,
    jno: i64,
    sign: i64,
    eid: Option<PStr>, // None: "" (an expiry)
}

impl RStep {
    fn same(&self, o: &RStep) -> bool {
        self.seg == o.seg
            && self.ch == o.ch
            && self.tp == o.tp
            && self.src == o.src
            && self.dst == o.dst
            && self.prev2 == o.prev2
            && self.gap == o.gap
            && self.ts == o.ts
            && self.is_new == o.is_new
            && self.rev == o.rev
            && self.jno == o.jno
            && self.sign == o.sign
            && same_str(&self.cid, &o.cid)
            && same_str(&self.session, &o.session)
            && match (&self.eid, &o.eid) {
                (None, None) => true,
                (Some(a), Some(b)) => same_str(a, b),
                _ => false,
            }
    }
}

/// Everything kept per customer (`CustomerState`).
struct Customer {
    cid: PStr,
    seen: Vec<u64>,
    seen_pos: usize, // in digests
    base: Cursor,
    cur: Cursor,
    hist: VecDeque<Entry>,
    n_events: i64,
    n_sessions: i64,
    n_support: i64,
    n_conversions: i64,
    n_churns: i64,
    n_expired: i64,
    revenue: f64,
    first_ts: i64,
    by_channel: Vec<(u32, i64)>, // in the Python dict's insertion order
    changed_in: u64, // the last `apply` call that added the customer to its changed set
}

impl Customer {
    fn new(cid: PStr, empty: &Cursor) -> Self {
        Customer {
            cid,
            seen: Vec::new(),
            seen_pos: 0,
            base: empty.clone(),
            cur: empty.clone(),
            hist: VecDeque::new(),
            n_events: 0,
            n_sessions: 0,
            n_support: 0,
            n_conversions: 0,
            n_churns: 0,
            n_expired: 0,
            revenue: 0.0,
            first_ts: -1,
            by_channel: Vec::new(),
            changed_in: 0,
        }
    }

    fn has_seen(&self, dig: u64) -> bool {
        self.seen.contains(&dig)
    }
}

/// Strings as small codes, with the Python string of each code for the outputs.
struct Interner {
    ix: FxMap<Box<str>, u32>,
    py: Vec<PStr>,
    // a few recent Python strings by address (the same object recurs: literals, cached values)
    by_ptr: Vec<(usize, u32, Option<PStr>)>,
}

impl Interner {
    fn code(&mut self, py: Python<'_>, s: &Bound<'_, PyString>) -> PyResult<u32> {
        let ptr = s.as_ptr() as usize;
        // the address multiplied, high bits taken (strings of one size class share low bits)
        let mixed = (ptr as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
        let slot = mixed as usize & (self.by_ptr.len() - 1);
        let hit = &self.by_ptr[slot];
        if hit.0 == ptr && hit.2.is_some() {
            return Ok(hit.1);
        }
        let text = s.to_str()?;
        let code = match self.ix.get(text) {
            Some(&c) => c,
            None => self.add(py, text),
        };
        self.by_ptr[slot] = (ptr, code, Some(PStr::of(s)));
        Ok(code)
    }

    fn add(&mut self, py: Python<'_>, text: &str) -> u32 {
        let c = self.py.len() as u32;
        self.ix.insert(text.into(), c);
        self.py.push(PStr::take(PyString::intern_bound(py, text)));
        c
    }

    fn text<'a>(&'a self, py: Python<'a>, code: u32) -> &'a str {
        let _ = py;
        self.py[code as usize].text()
    }
}

/// The output of one call: steps (a `StepBatch` when it returns), changed.
struct Out<'py> {
    steps: RefCell<Vec<RStep>>,
    changed: Bound<'py, PySet>,
}

#[pyclass(module = "journeymap_journeys")]
pub struct NativeJourneyCore {
    step_type: Py<PyAny>,
    session_gap_ms: i64,
    lateness_ms: i64,
    kept: usize,
    dedup: usize, // digests
    horizon_ms: i64,
    #[pyo3(get, set)]
    watermark_ms: i64,
    strs: Interner,
    outcome: Vec<u32>, // code -> Markov state code
    conversion: Vec<String>,
    churn: Vec<String>,
    support: u32,
    empty_cursor: Cursor,
    cix: FxMap<Box<str>, u32>,
    // customer id objects by address -> slot: the events of a customer carry the same string
    // object batch after batch (the resolver's), found without hashing and comparing its text
    cid_at: FxMap<usize, u32>,
    applies: u64, // `apply` calls made
    slots: Vec<Option<Box<Customer>>>,
    free: Vec<u32>,
    // the open journeys by the hour of their deadline (`_due`): bucket -> slots, a slot added
    // each time a cursor moves into the bucket and never taken out; an entry counts only while
    // its slot's customer is open and due in that bucket (`due_slots`), so a customer's moves,
    // removal and a slot taken by another customer cost no search
    due: BTreeMap<i64, Vec<u32>>,
    ev_layout: Option<EvLayout>,
    ev_type: Option<Py<PyAny>>,
    table: Option<Arc<steps::StepTable>>, // the strings of the last StepBatch
    avx2: bool,
    // the interpreter's dicts are laid out as `DictKeys` says (`FieldAt`)
    dict_layout: bool,
    fields: EvFields,
}

/// Where `apply` found each field of the events' TouchpointEvents last (`FieldAt`).
#[derive(Default)]
struct EvFields {
    id: FieldAt,
    tp: FieldAt,
    ch: FieldAt,
    sid: FieldAt,
    rev: FieldAt,
}

impl NativeJourneyCore {
    fn intern(&mut self, py: Python<'_>, s: &Bound<'_, PyString>) -> PyResult<u32> {
        let n = self.strs.py.len();
        let c = self.strs.code(py, s)?;
        if self.strs.py.len() > n {
            self.note_new_code(py, c);
        }
        Ok(c)
    }

    fn intern_text(&mut self, py: Python<'_>, text: &str) -> u32 {
        if let Some(&c) = self.strs.ix.get(text) {
            return c;
        }
        let c = self.strs.add(py, text);
        self.note_new_code(py, c);
        c
    }

    fn note_new_code(&mut self, py: Python<'_>, c: u32) {
        let text = self.strs.text(py, c);
        let st = if self.conversion.iter().any(|t| t == text) {
            CONVERSION
        } else if self.churn.iter().any(|t| t == text) {
            NULL
        } else {
            c
        };
        self.outcome.push(st);
    }

    fn slot_of(&self, cid: &str) -> Option<u32> {
        self.cix.get(cid).copied()
    }

    /// `slot_of` the text of `cid`, first by the object's address: a customer holds its id
    /// object, so while it lives no other object has that address, and an entry whose slot
    /// holds another object (or none) is stale.
    fn slot_of_obj(&mut self, cid: &Bound<'_, PyString>, text: &str) -> Option<u32> {
        let at = cid.as_ptr() as usize;
        if let Some(&slot) = self.cid_at.get(&at) {
            if let Some(c) = &self.slots[slot as usize] {
                if c.cid.ptr() as usize == at {
                    return Some(slot);
                }
            }
        }
        let slot = self.slot_of(text)?;
        if self.cust(slot).cid.ptr() as usize == at {
            if self.cid_at.len() >= 2 * self.cix.len() + 1024 {
                self.cid_at.clear(); // stale entries of customers gone or renamed
            }
            self.cid_at.insert(at, slot);
        }
        Some(slot)
    }

    /// Ask for what `apply` reads of `chunk`'s events ahead of reading it, one level of
    /// pointers at a time so that the loads of a level overlap: the events' TouchpointEvents and
    /// their customers' slots, then the customers' records and the events' field dicts, then the
    /// customers' recent digests and last entry and the dicts' tables. (At a hundred thousand
    /// customers and more, most of these are out of the cache when their event comes.)
    fn warm(&self, chunk: &[Bound<'_, PyAny>]) {
        let l = match &self.ev_layout {
            Some(l) => l,
            None => return,
        };
        let null = std::ptr::null_mut::<ffi::PyObject>();
        let mut slot_at = [u32::MAX; WARM];
        let mut tes = [null; WARM];
        for (k, ev) in chunk.iter().enumerate() {
            let p = ev.as_ptr();
            unsafe {
                if ffi::Py_TYPE(p) != l.ty {
                    continue;
                }
                let cid = *((p as *mut u8).offset(l.off[0]) as *mut *mut ffi::PyObject);
                tes[k] = *((p as *mut u8).offset(l.off[1]) as *mut *mut ffi::PyObject);
                if !tes[k].is_null() {
                    prefetch(tes[k]);
                }
                if let Some(&slot) = self.cid_at.get(&(cid as usize)) {
                    slot_at[k] = slot;
                    prefetch(self.slots.as_ptr().add(slot as usize));
                }
            }
        }
        let mut custs: [*const Customer; WARM] = [std::ptr::null(); WARM];
        let mut dicts = [null; WARM];
        for k in 0..chunk.len() {
            if let Some(Some(c)) = self.slots.get(slot_at[k] as usize) {
                let p: *const Customer = &**c;
                for line in 0..(std::mem::size_of::<Customer>() + 63) / 64 {
                    prefetch(unsafe { (p as *const u8).add(64 * line) });
                }
                custs[k] = p;
            }
            if !tes[k].is_null() {
                let dp = unsafe { ffi::_PyObject_GetDictPtr(tes[k]) };
                if !dp.is_null() && unsafe { !(*dp).is_null() } {
                    dicts[k] = unsafe { *dp };
                    prefetch(dicts[k]);
                }
            }
        }
        for k in 0..chunk.len() {
            if !custs[k].is_null() {
                let c = unsafe { &*custs[k] };
                prefetch(c.seen.as_ptr());
                if let Some(last) = c.hist.back() {
                    prefetch(last);
                }
                // (`walk` compares and copies the current session id)
                prefetch(c.cur.session.ptr());
            }
            let d = dicts[k];
            if !d.is_null() && unsafe { ffi::PyDict_CheckExact(d) } != 0 {
                let keys = unsafe { (*(d as *mut ffi::PyDictObject)).ma_keys } as *const u8;
                for line in 0..4 {
                    prefetch(unsafe { keys.add(64 * line) });
                }
            }
        }
    }

    /// What `apply` reads first of each event of `chunk` (into `pre`, by position): its
    /// TouchpointEvent, that one's field dict, its event id and the id's digest, the digests
    /// taken together (`b2x4::digests`). Only from the type's slot and the instance dict, with
    /// no getattr (nothing runs that could see the order of the reads); None where that does
    /// not apply, and `apply` reads the event alone, as it did.
    fn read_ids<'py>(
        &self,
        chunk: &[Bound<'py, PyAny>],
        n_event_id: &Bound<'py, PyString>,
        at: &mut FieldAt,
        pre: &mut Vec<Option<Pre<'py>>>,
    ) {
        pre.clear();
        let l = match &self.ev_layout {
            Some(l) => l,
            None => return,
        };
        for ev in chunk {
            pre.push(read_id(ev, l, n_event_id, at, self.dict_layout));
        }
        let mut ids: [&[u8]; WARM] = [&[]; WARM];
        let mut at = [0usize; WARM];
        let mut n = 0;
        for (k, p) in pre.iter().enumerate() {
            if let Some(p) = p {
                ids[n] = p.id;
                at[n] = k;
                n += 1;
            }
        }
        let mut digs = [0u64; WARM];
        b2x4::digests(&ids[..n], &mut digs[..n], self.avx2);
        for j in 0..n {
            if let Some(p) = pre[at[j]].as_mut() {
                p.dig = digs[j];
            }
        }
    }

    fn cust(&self, slot: u32) -> &Customer {
        self.slots[slot as usize].as_ref().unwrap()
    }

    fn cust_mut(&mut self, slot: u32) -> &mut Customer {
        self.slots[slot as usize].as_mut().unwrap()
    }

    fn new_customer(&mut self, cid_text: &str, cid: PStr) -> u32 {
        let c = Box::new(Customer::new(cid, &self.empty_cursor));
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(c);
                s
            }
            None => {
                self.slots.push(Some(c));
                (self.slots.len() - 1) as u32
            }
        };
        self.cix.insert(cid_text.into(), slot);
        slot
    }

    fn remove_customer(&mut self, cid_text: &str) -> Option<Box<Customer>> {
        let slot = self.cix.remove(cid_text)?;
        self.free.push(slot);
        // (its entries in the deadline index no longer count: `due_slots`)
        self.slots[slot as usize].take()
    }

    /// `_walk`: the cursor after `e`, pushing its step(s) to `out` (an expiry may precede it).
    fn walk(
        &self,
        py: Python<'_>,
        cid: &PStr,
        cur: &Cursor,
        e: &Entry,
        out: Option<&mut Vec<RStep>>,
    ) -> Cursor {
        let mut is_open = cur.is_open;
        let mut src = cur.src;
        let mut prev2 = cur.prev2;
        let mut jno = cur.jno;
        let mut sess_start = cur.sess_start;
        let last_ts = cur.last_ts;
        let ts = e.ts;
        let mut out = out;
        if is_open && ts - last_ts >= self.horizon_ms {
            if let Some(o) = out.as_deref_mut() {
                o.push(self.expiry_step(cid, cur));
            }
            is_open = false;
        }
        if !is_open {
            jno += 1;
            src = START;
            prev2 = EMPTY;
        }
        let is_new;
        let session: PStr;
        if let Some(given) = &e.given {
            is_new = !same_str(given, &cur.session) || last_ts < 0;
            session = given.clone();
        } else if last_ts >= 0 && ts - last_ts <= self.session_gap_ms {
            is_new = false;
            session = cur.session.clone();
        } else {
            is_new = true;
            session = new_session(py, cid, ts);
        }
        if is_new {
            sess_start = ts;
        }
        let dst = self.outcome[e.tp as usize];
        if let Some(o) = out {
            o.push(RStep {
                cid: cid.clone(),
                seg: e.seg,
                ch: e.ch,
                tp: e.tp,
                src,
                dst,
                prev2,
                gap: if src == START { 0 } else { ts - last_ts },
                ts,
                session: session.clone(),
                is_new,
                rev: e.rev,
                jno,
                sign: 1,
                eid: Some(e.eid.clone()),
            });
        }
        Cursor {
            last_ts: ts,
            is_open: dst != CONVERSION && dst != NULL,
            src: dst,
            prev2: src,
            session,
            sess_start,
            jno,
            ch: e.ch,
            seg: e.seg,
        }
    }

    fn expiry_step(&self, cid: &PStr, cur: &Cursor) -> RStep {
        RStep {
            cid: cid.clone(),
            seg: cur.seg,
            ch: cur.ch,
            tp: EMPTY,
            src: cur.src,
            dst: NULL,
            prev2: cur.prev2,
            gap: self.horizon_ms,
            ts: cur.last_ts + self.horizon_ms,
            session: cur.session.clone(),
            is_new: false,
            rev: 0.0,
            jno: cur.jno,
            sign: 1,
            eid: None,
        }
    }

    fn replay<'a>(
        &self,
        py: Python<'_>,
        cid: &PStr,
        cur: &Cursor,
        entries: impl Iterator<Item = &'a Entry>,
        mut out: Option<&mut Vec<RStep>>,
    ) -> Cursor {
        let mut c = cur.clone();
        for e in entries {
            c = self.walk(py, cid, &c, e, out.as_deref_mut());
        }
        c
    }

    /// `_count`
    fn count(&self, s: &mut Customer, st: &RStep, sign: i64) {
        if st.tp != EMPTY {
            s.n_events += sign;
            let ch = st.ch;
            match s.by_channel.iter().position(|&(c, _)| c == ch) {
                Some(i) => {
                    let n = s.by_channel[i].1 + sign;
                    if n != 0 {
                        s.by_channel[i].1 = n;
                    } else {
                        s.by_channel.remove(i);
                    }
                }
                None => {
                    if sign != 0 {
                        s.by_channel.push((ch, sign));
                    }
                }
            }
            if ch == self.support {
                s.n_support += sign;
            }
            if st.is_new {
                s.n_sessions += sign;
            }
            if st.rev != 0.0 {
                s.revenue += sign as f64 * st.rev;
            }
            if st.dst == CONVERSION {
                s.n_conversions += sign;
            } else if st.dst == NULL {
                s.n_churns += sign;
            }
        } else {
            s.n_expired += sign;
        }
    }

    fn bucket(&self, cur: &Cursor) -> Option<i64> {
        if cur.is_open {
            Some((cur.last_ts + self.horizon_ms).div_euclid(DUE_BUCKET_MS))
        } else {
            None
        }
    }

    /// `_index`: a customer (by slot) moved from deadline bucket `old` to `new` (its entry in
    /// `old` no longer counts: see `due_slots`).
    fn index(&mut self, slot: u32, old: Option<i64>, new: Option<i64>) {
        if old != new {
            if let Some(nb) = new {
                self.due.entry(nb).or_default().push(slot);
            }
        }
    }

    /// The slots of the customers due in `bucket` among `entries` (that bucket's entries):
    /// open and due there now, each once, in customer id order.
    fn due_slots(&self, bucket: i64, entries: &[u32]) -> Vec<u32> {
        let mut out: Vec<u32> = entries
            .iter()
            .copied()
            .filter(|&slot| match self.slots.get(slot as usize) {
                Some(Some(c)) => self.bucket(&c.cur) == Some(bucket),
                _ => false,
            })
            .collect();
        out.sort_unstable_by(|&a, &b| {
            self.cust(a).cid.text().cmp(self.cust(b).cid.text()).then(a.cmp(&b))
        });
        out.dedup();
        out
    }

    /// `_net`: additions and retractions that differ (Counter order: added first).
    fn net(&self, _py: Python<'_>, retracted: Vec<RStep>, added: Vec<RStep>) -> Vec<RStep> {
        let mut keys: Vec<(RStep, i64)> = Vec::with_capacity(added.len() + retracted.len());
        for st in added {
            match keys.iter_mut().find(|(k, _)| k.same(&st)) {
                Some(k) => k.1 += 1,
                None => keys.push((st, 1)),
            }
        }
        for st in retracted {
            match keys.iter_mut().find(|(k, _)| k.same(&st)) {
                Some(k) => k.1 -= 1,
                None => keys.push((st, -1)),
            }
        }
        let mut out = Vec::with_capacity(keys.len());
        for (k, n) in &keys {
            for _ in 0..(*n).max(0) {
                out.push(k.clone());
            }
        }
        for (k, n) in &keys {
            for _ in 0..(-*n).max(0) {
                let mut r = k.clone();
                r.sign = -1;
                out.push(r);
            }
        }
        out
    }

    /// `_emit`: count the steps into the customer and send them out.
    fn emit(&self, _py: Python<'_>, s: &mut Customer, steps: &[RStep], out: &Out<'_>) -> PyResult<()> {
        for st in steps {
            self.count(s, st, st.sign);
            out.steps.borrow_mut().push(st.clone());
        }
        Ok(())
    }

    /// `_insert`: an out-of-order entry in place, and the corrections of the steps after it.
    fn insert(&mut self, py: Python<'_>, slot: u32, e: Entry, out: &Out<'_>) -> PyResult<()> {
        let mut s = self.slots[slot as usize].take().unwrap();
        let key = (e.ts, e.dig);
        let mut i = s.hist.len();
        while i > 0 && (s.hist[i - 1].ts, s.hist[i - 1].dig) > key {
            i -= 1;
        }
        let cid = s.cid.clone();
        let cur = self.replay(py, &cid, &s.base, s.hist.range(..i), None);
        let mut old = Vec::new();
        self.replay(py, &cid, &cur, s.hist.range(i..), Some(&mut old));
        let mut new = Vec::new();
        let end = self.replay(
            py,
            &cid,
            &cur,
            std::iter::once(&e).chain(s.hist.range(i..)),
            Some(&mut new),
        );
        let steps = self.net(py, old, new);
        let r = self.emit(py, &mut s, &steps, out);
        s.hist.insert(i, e);
        s.cur = end;
        self.slots[slot as usize] = Some(s);
        r
    }

    /// `_fold`: history older than the frontier beyond the last `kept` entries into `base`.
    fn fold(&self, py: Python<'_>, s: &mut Customer, frontier: i64) {
        let mut n = 0;
        let mut base: Option<Cursor> = None;
        while s.hist.len() - n > self.kept && s.hist[n].ts < frontier {
            let b = self.walk(py, &s.cid, base.as_ref().unwrap_or(&s.base), &s.hist[n], None);
            base = Some(b);
            n += 1;
        }
        if let Some(b) = base {
            s.base = b;
            s.hist.drain(..n);
        }
    }

    fn cursor_obj<'py>(&self, py: Python<'py>, c: &Cursor) -> Bound<'py, PyTuple> {
        PyTuple::new_bound(
            py,
            [
                c.last_ts.into_py(py),
                c.is_open.into_py(py),
                self.strs.py[c.src as usize].obj(py),
                self.strs.py[c.prev2 as usize].obj(py),
                c.session.obj(py),
                c.sess_start.into_py(py),
                c.jno.into_py(py),
                self.strs.py[c.ch as usize].obj(py),
                self.strs.py[c.seg as usize].obj(py),
            ],
        )
    }

    fn cursor_from(&mut self, py: Python<'_>, t: &Bound<'_, PyAny>) -> PyResult<Cursor> {
        let t = t.downcast::<PyTuple>()?;
        Ok(Cursor {
            last_ts: t.get_item(0)?.extract()?,
            is_open: t.get_item(1)?.extract()?,
            src: self.intern(py, t.get_item(2)?.downcast()?)?,
            prev2: self.intern(py, t.get_item(3)?.downcast()?)?,
            session: PStr::take(t.get_item(4)?.downcast_into::<PyString>()?),
            sess_start: t.get_item(5)?.extract()?,
            jno: t.get_item(6)?.extract()?,
            ch: self.intern(py, t.get_item(7)?.downcast()?)?,
            seg: self.intern(py, t.get_item(8)?.downcast()?)?,
        })
    }

    fn rev_obj(py: Python<'_>, rev: f64) -> PyObject {
        if rev == 0.0 {
            0i64.into_py(py)
        } else {
            rev.into_py(py)
        }
    }

    /// A customer in `CustomerState.__getstate__`'s layout (a tuple of its slots).
    fn state_obj<'py>(&self, py: Python<'py>, s: &Customer) -> PyResult<Bound<'py, PyTuple>> {
        let mut ring = Vec::with_capacity(s.seen.len() * 8);
        for d in &s.seen {
            ring.extend_from_slice(&d.to_be_bytes());
        }
        let hist = PyList::empty_bound(py);
        for e in &s.hist {
            let given = match &e.given {
                Some(g) => g.obj(py),
                None => py.None(),
            };
            hist.append(PyTuple::new_bound(
                py,
                [
                    e.ts.into_py(py),
                    e.eid.obj(py),
                    self.strs.py[e.tp as usize].obj(py),
                    self.strs.py[e.ch as usize].obj(py),
                    given,
                    self.strs.py[e.seg as usize].obj(py),
                    Self::rev_obj(py, e.rev),
                ],
            ))?;
        }
        let by_channel = PyDict::new_bound(py);
        for &(c, n) in &s.by_channel {
            by_channel.set_item(self.strs.py[c as usize].bound(py), n)?;
        }
        Ok(PyTuple::new_bound(
            py,
            [
                PyByteArray::new_bound(py, &ring).into_any().unbind(),
                (s.seen_pos * 8).into_py(py),
                self.cursor_obj(py, &s.base).into_any().unbind(),
                self.cursor_obj(py, &s.cur).into_any().unbind(),
                hist.into_any().unbind(),
                s.n_events.into_py(py),
                s.n_sessions.into_py(py),
                s.n_support.into_py(py),
                s.n_conversions.into_py(py),
                s.n_churns.into_py(py),
                s.n_expired.into_py(py),
                s.revenue.into_py(py),
                s.first_ts.into_py(py),
                by_channel.into_any().unbind(),
            ],
        ))
    }
}

/// Where `ResolvedEvent`'s slots sit in its instances (read directly when the type is the same).
struct EvLayout {
    ty: *mut ffi::PyTypeObject,
    off: [isize; 4], // customer_id, event, segment, ts_ms
}

// SAFETY: a type pointer kept alive by the reference the core holds (`ev_type`).
unsafe impl Send for EvLayout {}

fn slot_offset(ty: &Bound<'_, PyAny>, name: &Bound<'_, PyString>) -> Option<isize> {
    let d = ty.getattr(name).ok()?;
    if d.get_type().name().ok()?.to_str().ok()? != "member_descriptor" {
        return None;
    }
    unsafe {
        let descr = d.as_ptr() as *mut ffi::PyMemberDescrObject;
        let member = (*descr).d_member as *mut ffi::PyMemberDef;
        if (*member).type_code != 16 {
            return None; // T_OBJECT_EX only
        }
        Some((*member).offset as isize)
    }
}

/// An event's TouchpointEvent, its field dict, its event id (and the id's UTF-8 and digest),
/// read ahead of the event (`NativeJourneyCore::read_ids`).
struct Pre<'py> {
    te: Bound<'py, PyAny>,
    td: *mut ffi::PyObject,
    eid: Bound<'py, PyString>,
    id: &'py [u8],
    dig: u64,
}

/// `Pre` of `ev` when its type is the layout's and the id is in the TouchpointEvent's instance
/// dict, a string with UTF-8; None otherwise (nothing raised, no error left set).
fn read_id<'py>(
    ev: &Bound<'py, PyAny>,
    l: &EvLayout,
    n_event_id: &Bound<'py, PyString>,
    at: &mut FieldAt,
    dict_layout: bool,
) -> Option<Pre<'py>> {
    unsafe {
        if ffi::Py_TYPE(ev.as_ptr()) != l.ty {
            return None;
        }
        let p = *((ev.as_ptr() as *mut u8).offset(l.off[1]) as *mut *mut ffi::PyObject);
        if p.is_null() {
            return None;
        }
        let te = Bound::from_borrowed_ptr(ev.py(), p);
        let td = instance_dict(&te);
        if td.is_null() {
            return None;
        }
        let e = at.get(td, n_event_id, dict_layout);
        if e.is_null() {
            if !ffi::PyErr_Occurred().is_null() {
                ffi::PyErr_Clear();
            }
            return None;
        }
        let eid = Bound::from_borrowed_ptr(ev.py(), e).downcast_into::<PyString>().ok()?;
        let mut n: ffi::Py_ssize_t = 0;
        let u = ffi::PyUnicode_AsUTF8AndSize(eid.as_ptr(), &mut n);
        if u.is_null() {
            ffi::PyErr_Clear();
            return None;
        }
        // (the UTF-8 lives as long as the string, which `eid` holds)
        let id = std::slice::from_raw_parts(u as *const u8, n as usize);
        Some(Pre { te, td, eid, id, dig: 0 })
    }
}

/// `obj.<slot>` read at its offset, or by getattr when the layout does not apply.
fn slot_or_attr<'py>(
    obj: &Bound<'py, PyAny>,
    layout: &Option<EvLayout>,
    i: usize,
    name: &Bound<'py, PyString>,
) -> PyResult<Bound<'py, PyAny>> {
    if let Some(l) = layout {
        unsafe {
            if ffi::Py_TYPE(obj.as_ptr()) == l.ty {
                let p = *((obj.as_ptr() as *mut u8).offset(l.off[i]) as *mut *mut ffi::PyObject);
                if !p.is_null() {
                    return Ok(Bound::from_borrowed_ptr(obj.py(), p));
                }
            }
        }
    }
    obj.getattr(name)
}

/// `obj.<name>` from the instance dict `dict` (a model's fields), or by getattr.
fn dict_or_attr<'py>(
    obj: &Bound<'py, PyAny>,
    dict: *mut ffi::PyObject,
    name: &Bound<'py, PyString>,
) -> PyResult<Bound<'py, PyAny>> {
    if !dict.is_null() {
        unsafe {
            let p = ffi::PyDict_GetItemWithError(dict, name.as_ptr());
            if !p.is_null() {
                return Ok(Bound::from_borrowed_ptr(obj.py(), p));
            }
            if !ffi::PyErr_Occurred().is_null() {
                return Err(PyErr::fetch(obj.py()));
            }
        }
    }
    obj.getattr(name)
}

/// The head of CPython 3.11's and 3.12's `PyDictKeysObject` (`Objects/dict-common.h`), followed
/// by the hash index (`1 << log2_index_bytes` bytes), then the entries.
#[repr(C)]
struct DictKeys {
    refcnt: ffi::Py_ssize_t,
    log2_size: u8,
    log2_index_bytes: u8,
    kind: u8, // 0 general, 1 str keys, 2 split
    version: u32,
    usable: ffi::Py_ssize_t,
    nentries: ffi::Py_ssize_t,
}

/// Where one field of the events' field dicts was found last: its entry's position and its key
/// object (held, so that no other object takes its address). The dicts of one model's
/// instances hold their keys in one order: the entry at that position, with that very key, is
/// the field's, found without hashing and probing.
#[derive(Default)]
struct FieldAt(Option<(usize, PStr)>);

impl FieldAt {
    /// `PyDict_GetItemWithError(dict, name)`: a borrowed value, or null (with an error set if
    /// one occurred). `layout`: the interpreter's dicts are laid out as `DictKeys` says (3.11,
    /// 3.12); then a combined table of str keys is read at the remembered entry first.
    ///
    /// # Safety
    /// `dict` is a live dict (or subclass); the GIL is held.
    unsafe fn get(&mut self, dict: *mut ffi::PyObject, name: &Bound<'_, PyString>, layout: bool) -> *mut ffi::PyObject {
        let d = dict as *mut ffi::PyDictObject;
        if !layout || !(*d).ma_values.is_null() {
            return ffi::PyDict_GetItemWithError(dict, name.as_ptr());
        }
        let keys = (*d).ma_keys as *const DictKeys;
        if (*keys).kind != 1 {
            return ffi::PyDict_GetItemWithError(dict, name.as_ptr());
        }
        let n = (*keys).nentries as usize;
        // (key, value) pairs, after the index
        let entries = (keys as *const u8)
            .add(std::mem::size_of::<DictKeys>())
            .add(1usize << (*keys).log2_index_bytes) as *const [*mut ffi::PyObject; 2];
        if let Some((ix, key)) = &self.0 {
            if *ix < n {
                let e = &*entries.add(*ix);
                if e[0] == key.ptr() && !e[1].is_null() {
                    return e[1];
                }
            }
        }
        let v = ffi::PyDict_GetItemWithError(dict, name.as_ptr());
        if !v.is_null() {
            // the live entry that holds it under a key equal to `name`
            for ix in 0..n {
                let e = &*entries.add(ix);
                if e[1] == v
                    && !e[0].is_null()
                    && (e[0] == name.as_ptr() || ffi::PyUnicode_Compare(e[0], name.as_ptr()) == 0)
                {
                    ffi::Py_INCREF(e[0]);
                    self.0 = Some((ix, PStr(NonNull::new_unchecked(e[0]))));
                    break;
                }
            }
        }
        v
    }
}

/// `dict_or_attr` through a `FieldAt`.
fn field_or_attr<'py>(
    obj: &Bound<'py, PyAny>,
    dict: *mut ffi::PyObject,
    name: &Bound<'py, PyString>,
    at: &mut FieldAt,
    layout: bool,
) -> PyResult<Bound<'py, PyAny>> {
    if !dict.is_null() {
        unsafe {
            let p = at.get(dict, name, layout);
            if !p.is_null() {
                return Ok(Bound::from_borrowed_ptr(obj.py(), p));
            }
            if !ffi::PyErr_Occurred().is_null() {
                return Err(PyErr::fetch(obj.py()));
            }
        }
    }
    obj.getattr(name)
}

fn instance_dict(obj: &Bound<'_, PyAny>) -> *mut ffi::PyObject {
    unsafe {
        let dp = ffi::_PyObject_GetDictPtr(obj.as_ptr());
        if dp.is_null() {
            std::ptr::null_mut()
        } else {
            *dp
        }
    }
}

/// `f"{customer_id}/{ts}"`, the id of a session the events did not name.
fn new_session(py: Python<'_>, cid: &PStr, ts: i64) -> PStr {
    let cid = cid.text();
    let mut text = String::with_capacity(cid.len() + 21);
    text.push_str(cid);
    text.push('/');
    push_int(&mut text, ts);
    PStr::take(PyString::new_bound(py, &text))
}

/// `n` in decimal (as `format!("{n}")` and Python's `str(n)`), without the formatting machinery.
fn push_int(out: &mut String, n: i64) {
    if n < 0 {
        out.push('-');
    }
    let mut v = n.unsigned_abs();
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    // (ASCII digits)
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap());
}

#[pymethods]
impl NativeJourneyCore {
    /// The core of one partition: `step_type` is `processors.journeys.Step`.
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        step_type: Py<PyAny>,
        session_gap_ms: i64,
        lateness_ms: i64,
        kept: usize,
        dedup_ids: usize,
        horizon_ms: i64,
        conversion: Vec<String>,
        churn: Vec<String>,
    ) -> Self {
        let mut strs = Interner {
            ix: FxMap::default(),
            py: Vec::new(),
            // touchpoints, channels and segments: some tens of strings, few colliding here
            by_ptr: (0..1024).map(|_| (0usize, 0u32, None)).collect(),
        };
        for t in ["", "start", "conversion", "null"] {
            strs.add(py, t);
        }
        let empty_str = strs.py[0].clone();
        let empty_cursor = Cursor {
            last_ts: -1,
            is_open: false,
            src: START,
            prev2: EMPTY,
            session: empty_str,
            sess_start: -1,
            jno: 0,
            ch: EMPTY,
            seg: EMPTY,
        };
        let mut core = NativeJourneyCore {
            step_type,
            session_gap_ms,
            lateness_ms,
            kept,
            dedup: dedup_ids,
            horizon_ms,
            watermark_ms: -(1i64 << 62),
            strs,
            outcome: Vec::new(),
            conversion,
            churn,
            support: 0,
            empty_cursor,
            cix: FxMap::default(),
            cid_at: FxMap::default(),
            applies: 0,
            slots: Vec::new(),
            free: Vec::new(),
            due: BTreeMap::new(),
            ev_layout: None,
            ev_type: None,
            table: None,
            avx2: has_avx2(),
            dict_layout: {
                let v = py.version_info();
                v.major == 3 && (v.minor == 11 || v.minor == 12)
            },
            fields: EvFields::default(),
        };
        for c in 0..4 {
            core.note_new_code(py, c);
        }
        core.support = core.intern_text(py, "support");
        core
    }

    /// `JourneyProcessor.apply`: returns (steps, duplicates, late, changed, applied) where late
    /// holds `(event, watermark_ms, frontier_ms)` and applied is None when every event was
    /// applied, else the list of those that were (neither duplicate nor late), in their order.
    ///
    /// With `pending` (the chain's reorder buffer), the record of each applied event goes there
    /// too, with seqs `seq + 1`, `seq + 2`, ... in order (`pending.extend(applied, seq)` without
    /// reading the events again).
    #[pyo3(signature = (events, watermark_ms=None, pending=None, seq=0))]
    #[allow(clippy::type_complexity)]
    fn apply<'py>(
        &mut self,
        py: Python<'py>,
        events: &Bound<'py, PyAny>,
        watermark_ms: Option<i64>,
        pending: Option<&Bound<'py, pending::NativePending>>,
        seq: i64,
    ) -> PyResult<(
        steps::StepBatch,
        Bound<'py, PyList>,
        Bound<'py, PyList>,
        Bound<'py, PySet>,
        Option<Bound<'py, PyList>>,
    )> {
        // about a step per event, and some expiries and corrections (a batch's vector grown by
        // doubling copied megabytes)
        let n_hint = events.len().unwrap_or(0);
        let room = n_hint + n_hint / 4;
        let out = Out { steps: RefCell::new(Vec::with_capacity(room)), changed: PySet::empty_bound(py)? };
        let mut applied: Vec<Bound<'py, PyAny>> = Vec::with_capacity(n_hint);
        let dups = PyList::empty_bound(py);
        let late = PyList::empty_bound(py);
        if let Some(w) = watermark_ms {
            if w > self.watermark_ms {
                self.watermark_ms = w;
            }
        }
        let mut wm = self.watermark_ms;
        let lateness = self.lateness_ms;
        let mut frontier = wm - lateness;
        let n_customer_id = intern!(py, "customer_id");
        let n_event = intern!(py, "event");
        let n_event_id = intern!(py, "event_id");
        let n_ts_ms = intern!(py, "ts_ms");
        let n_touchpoint = intern!(py, "touchpoint");
        let n_channel = intern!(py, "channel");
        let n_session_id = intern!(py, "session_id");
        let n_segment = intern!(py, "segment");
        let n_revenue = intern!(py, "revenue");
        let mut steps: Vec<RStep> = Vec::with_capacity(2);
        let mut pending = pending.map(|p| p.borrow_mut());
        let mut seq = seq;
        self.applies += 1;
        let call = self.applies;
        let mut all: Vec<Bound<'py, PyAny>> = Vec::with_capacity(n_hint);
        for ev in events.iter()? {
            all.push(ev?);
        }
        let events = all;
        let mut pre: Vec<Option<Pre<'py>>> = Vec::with_capacity(WARM);
        // (put back at the end; an error on the way leaves it to be learnt again)
        let mut fields = std::mem::take(&mut self.fields);
        let dict_layout = self.dict_layout;
        for (i, ev) in events.iter().enumerate() {
            if self.ev_type.is_none() {
                let ty = ev.get_type().into_any();
                let offs = [n_customer_id, n_event, n_segment, n_ts_ms].map(|n| slot_offset(&ty, n));
                if offs.iter().all(|o| o.is_some()) {
                    self.ev_layout = Some(EvLayout {
                        ty: ty.as_ptr() as *mut ffi::PyTypeObject,
                        off: offs.map(|o| o.unwrap()),
                    });
                }
                self.ev_type = Some(ty.unbind());
            }
            if i % WARM == 0 {
                let chunk = &events[i..events.len().min(i + WARM)];
                self.warm(chunk);
                self.read_ids(chunk, n_event_id, &mut fields.id, &mut pre);
            }
            let ahead = pre.get_mut(i % WARM).and_then(|p| p.take());
            let ev = ev.clone();
            let layout = &self.ev_layout;
            let cid_obj = slot_or_attr(&ev, layout, 0, n_customer_id)?.downcast_into::<PyString>()?;
            let (te, td, eid, dig) = match ahead {
                Some(p) => (p.te, p.td, p.eid, p.dig),
                None => {
                    let te = slot_or_attr(&ev, layout, 1, n_event)?;
                    let td = instance_dict(&te);
                    let eid = field_or_attr(&te, td, n_event_id, &mut fields.id, dict_layout)?
                        .downcast_into::<PyString>()?;
                    let dig = digest_of(eid.to_str()?);
                    (te, td, eid, dig)
                }
            };
            let cid_text = cid_obj.to_str()?;
            let found = self.slot_of_obj(&cid_obj, cid_text);
            if let Some(slot) = found {
                if self.cust(slot).has_seen(dig) {
                    dups.append(&ev)?;
                    continue;
                }
            }
            let ts: i64 = slot_or_attr(&ev, &self.ev_layout, 3, n_ts_ms)?.extract()?;
            if ts < frontier {
                late.append((&ev, wm, frontier))?;
                continue;
            }
            applied.push(ev.clone());
            let slot = match found {
                Some(s) => s,
                None => self.new_customer(cid_text, PStr::of(&cid_obj)),
            };
            if ts > wm {
                wm = ts;
                frontier = ts - lateness;
            }
            let tp_obj = field_or_attr(&te, td, n_touchpoint, &mut fields.tp, dict_layout)?;
            let tp = self.intern(py, tp_obj.downcast()?)?;
            let ch_obj = field_or_attr(&te, td, n_channel, &mut fields.ch, dict_layout)?;
            let ch = self.intern(py, ch_obj.downcast()?)?;
            let given = field_or_attr(&te, td, n_session_id, &mut fields.sid, dict_layout)?;
            let given = if given.is_none() {
                None
            } else {
                Some(PStr::take(given.downcast_into::<PyString>()?))
            };
            let seg_obj = slot_or_attr(&ev, &self.ev_layout, 2, n_segment)?;
            let seg = self.intern(py, seg_obj.downcast()?)?;
            let rev_obj = field_or_attr(&te, td, n_revenue, &mut fields.rev, dict_layout)?;
            let rev: f64 = if rev_obj.is_none() { 0.0 } else { rev_obj.extract()? };
            if let Some(p) = pending.as_mut() {
                seq += 1;
                let (tp_s, ch_s) = (self.strs.py[tp as usize].bound(py), self.strs.py[ch as usize].bound(py));
                p.push_read(py, &ev, ts, seq, &cid_obj, &tp_s, &ch_s, &seg_obj, dig)?;
            }
            let e = Entry { ts, dig, eid: PStr::take(eid), tp, ch, given, seg, rev };
            let dedup = self.dedup;
            let horizon = self.horizon_ms;
            let mut s = self.slots[slot as usize].take().unwrap();
            if s.seen.len() < dedup {
                s.seen.push(dig);
            } else {
                let pos = s.seen_pos;
                s.seen[pos] = dig;
                s.seen_pos = (pos + 1) % dedup;
            }
            let old_bucket = self.bucket(&s.cur);
            let out_of_order = match s.hist.back() {
                Some(last) => ts < s.cur.last_ts || (ts == s.cur.last_ts && dig <= last.dig),
                None => false,
            };
            if out_of_order {
                self.watermark_ms = wm;
                self.slots[slot as usize] = Some(s);
                self.insert(py, slot, e, &out)?;
                s = self.slots[slot as usize].take().unwrap();
                if ts < s.first_ts {
                    s.first_ts = ts;
                }
            } else {
                let cid = s.cid.clone();
                steps.clear();
                let new_cur = self.walk(py, &cid, &s.cur, &e, Some(&mut steps));
                for st in &steps {
                    self.count(&mut s, st, 1);
                }
                out.steps.borrow_mut().append(&mut steps);
                s.cur = new_cur;
                s.hist.push_back(e);
                if s.first_ts < 0 {
                    s.first_ts = ts;
                }
                let _ = horizon;
            }
            let new_bucket = self.bucket(&s.cur);
            self.index(slot, old_bucket, new_bucket);
            if s.hist.len() > self.kept && s.hist[0].ts < frontier {
                self.fold(py, &mut s, frontier);
            }
            if s.changed_in != call {
                s.changed_in = call; // (once a call: adding it again would change nothing)
                out.changed.add(s.cid.bound(py))?;
            }
            self.slots[slot as usize] = Some(s);
        }
        self.watermark_ms = wm;
        self.fields = fields;
        let applied = if dups.is_empty() && late.is_empty() { None } else { Some(PyList::new_bound(py, applied)) };
        Ok((self.batch(py, out.steps.into_inner()), dups, late, out.changed, applied))
    }

    /// `JourneyProcessor.expire`: returns (steps, changed).
    fn expire<'py>(&mut self, py: Python<'py>, now_ms: i64) -> PyResult<(steps::StepBatch, Bound<'py, PySet>)> {
        let out = Out { steps: RefCell::new(Vec::new()), changed: PySet::empty_bound(py)? };
        if now_ms > self.watermark_ms {
            self.watermark_ms = now_ms;
        }
        let frontier = self.watermark_ms - self.lateness_ms;
        let last_bucket = frontier.div_euclid(DUE_BUCKET_MS);
        let buckets: Vec<i64> = self.due.range(..=last_bucket).map(|(&b, _)| b).collect();
        for bucket in buckets {
            let entries = self.due.remove(&bucket).unwrap_or_default();
            // in customer id order, as the Python processor walks them (`sorted`)
            // (open journeys only: `due_slots` keeps the customers due in this hour)
            for slot in self.due_slots(bucket, &entries) {
                let mut s = self.slots[slot as usize].take().unwrap();
                if s.cur.last_ts + self.horizon_ms > frontier {
                    self.due.entry(bucket).or_default().push(slot); // due later this hour
                    self.slots[slot as usize] = Some(s);
                    continue;
                }
                let c = s.cid.clone();
                let st = self.expiry_step(&c, &s.cur);
                let r = self.emit(py, &mut s, std::slice::from_ref(&st), &out);
                s.cur.is_open = false;
                if s.hist.len() > self.kept && s.hist[0].ts < frontier {
                    self.fold(py, &mut s, frontier);
                }
                let cid = s.cid.bound(py).clone();
                self.slots[slot as usize] = Some(s);
                r?;
                out.changed.add(&cid)?;
            }
        }
        Ok((self.batch(py, out.steps.into_inner()), out.changed))
    }

    /// `JourneyProcessor.merge`: returns (steps, changed).
    fn merge<'py>(
        &mut self,
        py: Python<'py>,
        loser: &Bound<'py, PyString>,
        winner: &Bound<'py, PyString>,
    ) -> PyResult<(steps::StepBatch, Bound<'py, PySet>)> {
        let out = Out { steps: RefCell::new(Vec::new()), changed: PySet::empty_bound(py)? };
        let (lt, wt) = (loser.to_str()?, winner.to_str()?);
        if lt == wt || self.slot_of(lt).is_none() {
            return Ok((self.batch(py, out.steps.into_inner()), out.changed));
        }
        let ls = self.remove_customer(lt).unwrap();
        let wslot = match self.slot_of(wt) {
            Some(s) => s,
            None => self.new_customer(wt, PStr::of(winner)),
        };
        let mut ws = self.slots[wslot as usize].take().unwrap();
        out.changed.add(loser)?;
        out.changed.add(winner)?;
        let cut = ws.base.last_ts.max(ls.base.last_ts);
        let start = if ws.base.last_ts >= ls.base.last_ts { ws.base.clone() } else { ls.base.clone() };
        // (room for every step of both histories, and an expiry each: no growth on the way)
        let n_hist = ws.hist.len() + ls.hist.len();
        let mut retracted: Vec<RStep> = Vec::with_capacity(n_hist + 2);
        let mut old = Vec::with_capacity(n_hist + 1);
        for s in [&ws, &ls] {
            let mut i = 0;
            let mut cur = s.base.clone();
            while i < s.hist.len() && s.hist[i].ts <= cut {
                cur = self.walk(py, &s.cid, &cur, &s.hist[i], None);
                i += 1;
            }
            old.clear();
            let end = self.replay(py, &s.cid, &cur, s.hist.range(i..), Some(&mut old));
            if s.cur.is_open != end.is_open {
                old.push(self.expiry_step(&s.cid, &end));
            }
            retracted.append(&mut old);
        }
        // {e.event_id: e for e in ws.history + ls.history if e.ts > cut}, sorted by (ts, digest)
        let mut kept: Vec<Entry> = Vec::with_capacity(n_hist);
        {
            let mut at: FxMap<&str, usize> =
                FxMap::with_capacity_and_hasher(n_hist, Default::default());
            for e in ws.hist.iter().chain(ls.hist.iter()) {
                if e.ts <= cut {
                    continue;
                }
                let id = e.eid.text();
                match at.get(id) {
                    Some(&k) => kept[k] = e.clone(),
                    None => {
                        at.insert(id, kept.len());
                        kept.push(e.clone());
                    }
                }
            }
        }
        kept.sort_by_key(|e| (e.ts, e.dig));
        let wcid = ws.cid.clone();
        let mut added = Vec::with_capacity(kept.len() + 2);
        let mut new_cur = self.replay(py, &wcid, &start, kept.iter(), Some(&mut added));
        ws.n_events += ls.n_events;
        ws.n_sessions += ls.n_sessions;
        ws.n_support += ls.n_support;
        ws.n_conversions += ls.n_conversions;
        ws.n_churns += ls.n_churns;
        ws.n_expired += ls.n_expired;
        ws.revenue += ls.revenue;
        for &(ch, n) in &ls.by_channel {
            match ws.by_channel.iter().position(|&(c, _)| c == ch) {
                Some(i) => ws.by_channel[i].1 += n,
                None => ws.by_channel.push((ch, n)),
            }
        }
        let firsts: Vec<i64> = [ws.first_ts, ls.first_ts].into_iter().filter(|&t| t >= 0).collect();
        ws.first_ts = firsts.into_iter().min().unwrap_or(-1);
        let frontier = self.watermark_ms - self.lateness_ms;
        if new_cur.is_open && new_cur.last_ts + self.horizon_ms <= frontier {
            added.push(self.expiry_step(&wcid, &new_cur));
            new_cur.is_open = false;
        }
        let steps = self.net(py, retracted, added);
        let r = self.emit(py, &mut ws, &steps, &out);
        ws.base = start;
        // (the loser left the index with its slot, in `remove_customer`)
        let (ob, nb) = (self.bucket(&ws.cur), self.bucket(&new_cur));
        self.index(wslot, ob, nb);
        ws.cur = new_cur;
        ws.hist = kept.into();
        // the last `dedup` of the winner's digests then the loser's, in that order
        let n_seen = ws.seen.len() + ls.seen.len();
        let skip = n_seen.saturating_sub(self.dedup);
        let mut seen = Vec::with_capacity(n_seen - skip);
        seen.extend(ws.seen.iter().chain(ls.seen.iter()).skip(skip).copied());
        ws.seen = seen;
        ws.seen_pos = 0;
        self.slots[wslot as usize] = Some(ws);
        r?;
        Ok((self.batch(py, out.steps.into_inner()), out.changed))
    }

    /// Every customer as `(customer_id, CustomerState.__getstate__() layout)`.
    fn export<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty_bound(py);
        for s in self.slots.iter().flatten() {
            out.append((s.cid.bound(py), self.state_obj(py, s)?))?;
        }
        Ok(out)
    }

    /// One customer's state (as `export`), or None.
    fn get_state<'py>(&self, py: Python<'py>, cid: &str) -> PyResult<Option<Bound<'py, PyTuple>>> {
        match self.slot_of(cid) {
            Some(slot) => Ok(Some(self.state_obj(py, self.cust(slot))?)),
            None => Ok(None),
        }
    }

    /// Remove a customer (from the deadline index too); its state (as `export`) or None.
    fn pop_state<'py>(&mut self, py: Python<'py>, cid: &str) -> PyResult<Option<Bound<'py, PyTuple>>> {
        match self.remove_customer(cid) {
            Some(s) => Ok(Some(self.state_obj(py, &s)?)),
            None => Ok(None),
        }
    }

    /// Set a customer's state from `CustomerState.__getstate__()`'s layout (replacing any),
    /// and its place in the deadline index.
    fn put_state(&mut self, py: Python<'_>, cid: &Bound<'_, PyString>, state: &Bound<'_, PyTuple>) -> PyResult<()> {
        if state.len() != 14 {
            return Err(PyValueError::new_err("a CustomerState has 14 fields"));
        }
        let ring: Vec<u8> = state.get_item(0)?.downcast::<PyByteArray>()?.to_vec();
        let seen = ring.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().unwrap())).collect();
        let seen_pos: usize = state.get_item(1)?.extract::<usize>()? / 8;
        let base = self.cursor_from(py, &state.get_item(2)?)?;
        let cur = self.cursor_from(py, &state.get_item(3)?)?;
        let mut hist = VecDeque::new();
        for e in state.get_item(4)?.iter()? {
            let e = e?;
            let e = e.downcast::<PyTuple>()?;
            let eid = e.get_item(1)?.downcast_into::<PyString>()?;
            let given = e.get_item(4)?;
            hist.push_back(Entry {
                ts: e.get_item(0)?.extract()?,
                dig: digest_of(eid.to_str()?),
                eid: PStr::take(eid),
                tp: self.intern(py, e.get_item(2)?.downcast()?)?,
                ch: self.intern(py, e.get_item(3)?.downcast()?)?,
                given: if given.is_none() { None } else { Some(PStr::take(given.downcast_into::<PyString>()?)) },
                seg: self.intern(py, e.get_item(5)?.downcast()?)?,
                rev: e.get_item(6)?.extract()?,
            });
        }
        let mut by_channel = Vec::new();
        for (k, v) in state.get_item(13)?.downcast::<PyDict>()?.iter() {
            by_channel.push((self.intern(py, k.downcast()?)?, v.extract()?));
        }
        let cid_text = cid.to_str()?;
        let slot = match self.slot_of(cid_text) {
            Some(s) => s,
            None => self.new_customer(cid_text, PStr::of(cid)),
        };
        let old_bucket = self.bucket(&self.cust(slot).cur);
        let new_bucket = self.bucket(&cur);
        self.index(slot, old_bucket, new_bucket);
        let s = self.cust_mut(slot);
        s.seen = seen;
        s.seen_pos = seen_pos;
        s.base = base;
        s.cur = cur;
        s.hist = hist;
        s.n_events = state.get_item(5)?.extract()?;
        s.n_sessions = state.get_item(6)?.extract()?;
        s.n_support = state.get_item(7)?.extract()?;
        s.n_conversions = state.get_item(8)?.extract()?;
        s.n_churns = state.get_item(9)?.extract()?;
        s.n_expired = state.get_item(10)?.extract()?;
        s.revenue = state.get_item(11)?.extract()?;
        s.first_ts = state.get_item(12)?.extract()?;
        s.by_channel = by_channel;
        Ok(())
    }

    /// Whether the customer's dedup ring holds the event id (`JourneyProcessor._seen`).
    fn seen(&self, cid: &str, event_id: &str) -> bool {
        match self.slot_of(cid) {
            Some(slot) => self.cust(slot).has_seen(digest_of(event_id)),
            None => false,
        }
    }

    /// The deadline index as the Python processor keeps it: bucket -> set of customer ids.
    fn due<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new_bound(py);
        for (&bucket, entries) in &self.due {
            let slots = self.due_slots(bucket, entries);
            if slots.is_empty() {
                continue;
            }
            let ids = PySet::empty_bound(py)?;
            for slot in slots {
                ids.add(self.cust(slot).cid.bound(py))?;
            }
            out.set_item(bucket, ids)?;
        }
        Ok(out)
    }

    /// Rebuild the deadline index from the customers' cursors.
    fn reindex(&mut self) {
        self.due.clear();
        let open: Vec<(u32, Option<i64>)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (i as u32, self.bucket(&c.cur))))
            .collect();
        for (slot, b) in open {
            self.index(slot, None, b);
        }
    }

    /// The deadline bucket of a customer's current cursor (None: not open or unknown).
    fn due_bucket(&self, cid: &str) -> Option<i64> {
        self.slot_of(cid).and_then(|slot| self.bucket(&self.cust(slot).cur))
    }

    fn __len__(&self) -> usize {
        self.cix.len()
    }

    fn __contains__(&self, cid: &str) -> bool {
        self.cix.contains_key(cid)
    }

    /// The customer ids, in no particular order.
    fn customer_ids<'py>(&self, py: Python<'py>) -> Bound<'py, PyList> {
        let ids: Vec<PyObject> = self.slots.iter().flatten().map(|s| s.cid.obj(py)).collect();
        PyList::new_bound(py, ids)
    }

    /// The 8-byte digest of an event id, as `processors.journeys.event_digest` gives it.
    #[staticmethod]
    fn event_digest(event_id: &str) -> [u8; 8] {
        digest_of(event_id).to_be_bytes()
    }

    /// `event_digest` of each id, as `apply` takes them: several at once (four to a register
    /// where the CPU has AVX2, `b2x4`).
    #[staticmethod]
    fn event_digests(event_ids: Vec<String>) -> Vec<[u8; 8]> {
        let ids: Vec<&[u8]> = event_ids.iter().map(|e| e.as_bytes()).collect();
        let mut digs = vec![0u64; ids.len()];
        b2x4::digests(&ids, &mut digs, has_avx2());
        digs.into_iter().map(u64::to_be_bytes).collect()
    }
}

#[pymodule]
fn journeymap_journeys(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativeJourneyCore>()?;
    m.add_class::<steps::StepBatch>()?;
    m.add_class::<counter::NativeCounter>()?;
    m.add_class::<paths::NativePaths>()?;
    m.add_class::<funnels::NativeFunnelStep>()?;
    m.add_class::<funnels::NativeRuns>()?;
    m.add_class::<pending::NativePending>()?;
    m.add_class::<pending::NativeReleased>()?;
    // The hash of the sources it was built from (scripts/build-native.sh sets it; "" otherwise)
    m.add("SOURCE_HASH", option_env!("JOURNEYMAP_NATIVE_SOURCE_HASH").unwrap_or(""))?;
    Ok(())
}
