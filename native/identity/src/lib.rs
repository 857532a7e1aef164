//! Experiment (issue 3): the in-memory identity resolver's graph and decision loop in Rust.
//!
//! A port of `processors/identity.py` (`IdentityGraph`, `IdentityResolver._decide`,
//! `_apply_event`, `_join_fresh`, `_fold`) over interned node keys, in memory or over the
//! Redis store's worker cache (overlay mode). It reads each batch's events (`prepare_batch`:
//! identities, hashing, event times), decides and builds every output (`decide_batch`);
//! Python (`processors/identity_native.py`) hashes only values that are not ASCII. The semantics
//! must be exactly the Python ones: `bench/bench_identity_native.py --fingerprint` checks it.

use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{
    PyDateAccess, PyDateTime, PyDelta, PyDeltaAccess, PyDict, PyList, PyString, PyTimeAccess,
    PyTuple, PyTzInfoAccess, PyType,
};
use sha2::{Digest, Sha256};
use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};

const NONE: u32 = u32::MAX;

/// FxHash (rustc's multiply-rotate hash) from a per-process random seed: several times faster
/// than the default SipHash on the short keys here (salted hashes, customer names, raw identity
/// combinations); the seed keeps producers from choosing colliding values ahead of time.
#[derive(Clone, Copy)]
struct FxBuild(u64);

impl Default for FxBuild {
    fn default() -> Self {
        FxBuild(RandomState::new().build_hasher().finish())
    }
}

impl BuildHasher for FxBuild {
    type Hasher = Fx;
    fn build_hasher(&self) -> Fx {
        Fx(self.0)
    }
}

struct Fx(u64);

impl Fx {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for Fx {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64)
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64)
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i)
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64)
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

type FxSet<K> = HashSet<K, FxBuild>;

/// Byte strings -> positions in a list kept elsewhere (node keys, customer names, raw
/// combinations), by a 64-bit hash of each string: the table holds no string of its own, so
/// growing it moves integers instead of reading every string again (the rehash of a string
/// table was a tenth of `resolve_batch`), and each string is stored once. Open addressing
/// (linear probing, at most half full) over 16-byte slots that hold a string's whole hash,
/// its position and a word for the caller (`aux`: where `raw_ix`'s strings are): a lookup
/// reads one slot's cache line where a hash map reads its control bytes and then its bucket,
/// two lines apart (on 170k customers' tables, each a miss). Exact: a slot whose hash is the
/// string's is compared with the stored string, and probing goes on past one that differs.
#[derive(Default)]
struct HashIndex {
    slots: Vec<Slot>, // a power of two of them, or none
    len: usize,
    seed: FxBuild,
    narrow: u32, // > 0: keep only this many bits of each hash (tests: collisions on purpose)
}

#[derive(Clone, Copy)]
struct Slot {
    hash: u64,
    at: u32, // the string's position; NONE: an empty slot
    aux: u32,
}

const EMPTY_SLOT: Slot = Slot { hash: 0, at: NONE, aux: 0 };

impl HashIndex {
    fn hash(&self, s: &[u8]) -> u64 {
        let mut h = self.seed.build_hasher();
        h.write(s);
        // murmur3's finalizer: every bit of the table's hash depends on every byte
        let mut x = h.finish();
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^= x >> 33;
        if self.narrow > 0 {
            x &= (1u64 << self.narrow.min(63)) - 1;
        }
        x
    }

    /// The slot of the string `s` whose hash is `h`, where `at(position, aux)` is the stored
    /// string of a slot.
    #[inline]
    fn find<'a>(&self, h: u64, s: &[u8], at: impl Fn(u32, u32) -> &'a [u8]) -> Option<Slot> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut p = h as usize & mask;
        loop {
            let slot = self.slots[p];
            if slot.at == NONE {
                return None;
            }
            if slot.hash == h && at(slot.at, slot.aux) == s {
                return Some(slot);
            }
            p = (p + 1) & mask;
        }
    }

    /// The slot where a string of hash `h` starts its probe, if it holds that hash (to ask
    /// for what it points at ahead of the lookup).
    #[inline]
    fn first_slot(&self, h: u64) -> Option<Slot> {
        if self.slots.is_empty() {
            return None;
        }
        let slot = self.slots[h as usize & (self.slots.len() - 1)];
        if slot.at != NONE && slot.hash == h {
            Some(slot)
        } else {
            None
        }
    }

    /// Ask for the cache line of the slot where a string of hash `h` starts its probe.
    #[inline]
    fn prefetch(&self, h: u64) {
        if !self.slots.is_empty() {
            prefetch(&self.slots[h as usize & (self.slots.len() - 1)]);
        }
    }

    /// The position of `s`, where `at(position)` is the stored string of a position.
    fn get<'a>(&self, s: &[u8], at: impl Fn(u32) -> &'a [u8]) -> Option<u32> {
        self.find(self.hash(s), s, |i, _| at(i)).map(|slot| slot.at)
    }

    /// Index `s` (not indexed yet) at position `i` with the word `aux` (`at` as in `find`).
    fn insert<'a>(&mut self, s: &[u8], i: u32, aux: u32, at: impl Fn(u32, u32) -> &'a [u8]) {
        if 2 * (self.len + 1) > self.slots.len() {
            self.grow();
        }
        let h = self.hash(s);
        let mask = self.slots.len() - 1;
        let mut p = h as usize & mask;
        loop {
            let slot = self.slots[p];
            if slot.at == NONE {
                self.len += 1;
                break;
            }
            if slot.hash == h && at(slot.at, slot.aux) == s {
                break; // (indexed already: the new position replaces it)
            }
            p = (p + 1) & mask;
        }
        self.slots[p] = Slot { hash: h, at: i, aux };
    }

    /// Twice the slots (16 at first), each entry placed again by its stored hash.
    fn grow(&mut self) {
        let n = (2 * self.slots.len()).max(16);
        let old = std::mem::replace(&mut self.slots, vec![EMPTY_SLOT; n]);
        let mask = n - 1;
        for slot in old.into_iter().filter(|s| s.at != NONE) {
            let mut p = slot.hash as usize & mask;
            while self.slots[p].at != NONE {
                p = (p + 1) & mask;
            }
            self.slots[p] = slot;
        }
    }

    fn clear(&mut self) {
        if self.len > 0 {
            for slot in self.slots.iter_mut() {
                *slot = EMPTY_SLOT;
            }
            self.len = 0;
        }
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Ask for the cache line at `p` ahead of its use. A hint only: nothing on other targets.
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::x86_64::_mm_prefetch(p as *const i8, std::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

const NEVER: i64 = 1 << 62;

/// How many events `prepare_batch` and `decide_batch` ask the memory for at once.
const WARM: usize = 16;

fn rank(code: u8) -> u8 {
    match code {
        b'u' => 0,
        b'k' => 1,
        b'e' => 2,
        b'd' => 3,
        _ => 4,
    }
}

fn kind_of(code: u8) -> &'static str {
    match code {
        b'a' => "anonymous_id",
        b'd' => "device_id",
        b'u' => "user_id",
        b'e' => "email",
        _ => "crm_id",
    }
}

struct Root {
    ts: i64,
    key: u32,
    uniq: Vec<(u8, u32)>, // kind code -> node, unique kinds only
    size: i64,
}

struct Combo {
    keys: Vec<u32>,
    first: u32,     // keys[0] (NONE without keys): what an event anchored at once reads
    n_ignored: u32, // values ignored (a combination made from raw values)
    settled: Option<i64>, // the keys' latest first-seen time once found settled in one customer
    stamp: u64,           // the batch that computed `limit`
    limit: i64,
}

impl Combo {
    fn new(keys: Vec<u32>, n_ignored: usize) -> Self {
        let first = keys.first().copied().unwrap_or(NONE);
        Combo { keys, first, n_ignored: n_ignored as u32, settled: None, stamp: 0, limit: NEVER }
    }
}

struct Merge {
    loser: u32,
    winner: u32,
    ev: usize,
    ts: i64,
    shared: bool,
}

struct Clash {
    unique: bool,
    ev: usize,
    ts: i64,
    a: u32,
    b: u32,
    hashes: Vec<u32>,
}

/// A customer's record as Redis holds it (overlay mode): the token of the commit that wrote it
/// and its content (`sinks/identity_redis.py`'s `records`).
struct Rec {
    token: String,
    ts: i64,
    key: u32,
    uniq: Vec<(u8, u32)>,
    size: i64,
}

/// What a commit's sections were built from, for `overlay_committed` once it applied.
#[derive(Default)]
struct Pending {
    states: Vec<(u32, i64, i64)>, // node, first_seen, n_linked: as Redis now holds them
    written: Vec<u32>,            // customers whose record the commit rewrote
    gone: Vec<u32>,               // customers whose record the commit deleted
}

#[derive(Default)]
struct Decision {
    merges: Vec<Merge>,
    conflicts: Vec<Clash>,
    link_keys: Vec<u32>,
    dead: Vec<usize>,
}

/// The whole identity graph and the combinations' settled marks, for one in-memory resolver.
#[pyclass(module = "journeymap_native")]
pub struct NativeIdentityCore {
    salt: Vec<u8>,
    ignored: FxSet<String>, // Python's `v.strip().lower()` of each ignored placeholder
    ignored_max: usize,       // the longest of them (longer values are never ignored)
    unique: [bool; 128],
    max_linked: i64,
    keys: Vec<String>,
    key_ix: HashIndex, // keys -> node
    ncid: Vec<u32>,
    nfirst: Vec<i64>,
    nlinked: Vec<i64>,
    nstamp: Vec<u64>, // the batch that last listed the node in `link_keys`
    cnames: Vec<String>,
    cix: HashIndex, // cnames -> customer slot
    cpy: Vec<Option<Py<PyString>>>,
    roots: Vec<Option<Root>>,
    members: Vec<Vec<u32>>,
    combos: Vec<Combo>,
    batch: u64,
    // raw combinations (`push_raw`'s bytes) -> their combination (the index's `aux`: where
    // the bytes start in `raw_bytes`)
    raw_ix: HashIndex,
    raw_bytes: Vec<u8>, // the raw combinations, one after another, each after its length (u32)
    raw_buf: Vec<u8>, // `prepare_batch`'s scratch: a chunk's raw combinations
    // The prepared batch (`prepare_batch`, `set_combo`, `set_times`), per event: its
    // combination, its time and the time's object (the event's cached `ts_ms`)
    bcombos: Vec<usize>,
    bts: Vec<i64>,
    bts_obj: Vec<PyObject>,
    // Overlay mode (the Redis store's worker cache, `overlay_*`): the graph is the part the
    // store has cached; a node not cached has no customer (as `_CachedGraph`'s `cid`).
    overlay: bool,
    n_nodes: usize,                    // nodes with a customer
    nstored: Vec<Option<(i64, i64)>>,  // (first_seen, n_linked) as Redis holds it, if it does
    nwrote: Vec<u64>,                  // the batch (`ostamp`) that last noted the node written
    nopen: Vec<u64>,                   // the batch (`ostamp`) that last listed it in `bnodes`
    crec: Vec<Option<Rec>>,            // per customer: its record as Redis holds it
    ostamp: u64,
    bnodes: Vec<u32>,                  // the open batch's node keys
    used: Vec<u32>,                    // the cached customers of its cached keys, at begin
    written: Vec<u32>,                 // the nodes the decision wrote (first-seen or link count)
    moves: Vec<(u32, u32)>,            // customer folded into customer, in order
    new_keys: Vec<u32>,                // nodes the decision took as new
    pending: Pending,
}

impl NativeIdentityCore {
    fn is_unique(&self, node: u32) -> bool {
        self.unique[self.code(node) as usize]
    }

    fn code(&self, node: u32) -> u8 {
        self.keys[node as usize].as_bytes()[0]
    }

    /// (ts_a, key_a) < (ts_b, key_b), keys compared as strings
    fn earlier(&self, ts_a: i64, a: u32, ts_b: i64, b: u32) -> bool {
        ts_a < ts_b || (ts_a == ts_b && self.keys[a as usize] < self.keys[b as usize])
    }

    fn intern_key(&mut self, key: &str) -> u32 {
        if let Some(n) = self.node_of(key) {
            return n;
        }
        let n = self.keys.len() as u32;
        self.keys.push(key.to_owned());
        let keys = &self.keys;
        self.key_ix.insert(key.as_bytes(), n, 0, |i, _| keys[i as usize].as_bytes());
        self.ncid.push(NONE);
        self.nfirst.push(0);
        self.nlinked.push(0);
        self.nstamp.push(0);
        self.nstored.push(None);
        self.nwrote.push(0);
        self.nopen.push(0);
        n
    }

    /// The node of an interned key.
    fn node_of(&self, key: &str) -> Option<u32> {
        let keys = &self.keys;
        self.key_ix.get(key.as_bytes(), |i| keys[i as usize].as_bytes())
    }

    /// The slot of customer `name`, if it has one.
    fn slot_named(&self, name: &str) -> Option<u32> {
        let cnames = &self.cnames;
        self.cix.get(name.as_bytes(), |i| cnames[i as usize].as_bytes())
    }

    /// A new customer slot named `name`.
    fn new_slot(&mut self, name: &str) -> u32 {
        let c = self.cnames.len() as u32;
        self.cnames.push(name.to_owned());
        let cnames = &self.cnames;
        self.cix.insert(name.as_bytes(), c, 0, |i, _| cnames[i as usize].as_bytes());
        self.cpy.push(None);
        self.roots.push(None);
        self.members.push(Vec::new());
        self.crec.push(None);
        c
    }

    /// Intern a node key read from outside (a checkpoint, a Redis read): None unless it is a
    /// kind code and a hash.
    fn stored_key(&mut self, key: &str) -> Option<u32> {
        if key.len() < 17 || !key.is_ascii() {
            return None;
        }
        Some(self.intern_key(key))
    }

    /// Put node `n` in customer slot `c` with its first-seen time and link count (loading).
    fn place_node(&mut self, n: u32, c: u32, first: i64, linked: i64) {
        if self.ncid[n as usize] == NONE {
            self.n_nodes += 1;
        }
        self.ncid[n as usize] = c;
        self.nfirst[n as usize] = first;
        self.nlinked[n as usize] = linked;
    }

    fn slot_of(&mut self, name: &str) -> u32 {
        match self.slot_named(name) {
            Some(c) => c,
            None => self.new_slot(name),
        }
    }

    /// Overlay mode: note that the decision wrote `node`'s first-seen time or link count.
    fn wrote(&mut self, node: u32) {
        if self.overlay && self.nwrote[node as usize] != self.ostamp {
            self.nwrote[node as usize] = self.ostamp;
            self.written.push(node);
        }
    }

    /// Overlay mode: a node taken as new by the decision.
    fn took_new(&mut self, node: u32) {
        self.n_nodes += 1;
        if self.overlay {
            self.new_keys.push(node);
            self.wrote(node);
        }
    }

    /// The customer slot of `customer_id_for(key)`.
    fn customer_for(&mut self, node: u32) -> u32 {
        // "c_" and the key's first 16 hex digits, on the stack
        let mut name = [0u8; 18];
        name[..2].copy_from_slice(b"c_");
        name[2..].copy_from_slice(&self.keys[node as usize].as_bytes()[1..17]);
        // (ASCII: the key is a kind code and hex digits)
        self.slot_of(std::str::from_utf8(&name).unwrap())
    }

    fn cid_py(&mut self, py: Python<'_>, c: u32) -> Py<PyString> {
        let slot = &mut self.cpy[c as usize];
        if slot.is_none() {
            *slot = Some(PyString::new_bound(py, &self.cnames[c as usize]).unbind());
        }
        slot.as_ref().unwrap().clone_ref(py)
    }

    fn link(&mut self, d: &mut Decision, node: u32) {
        if self.nstamp[node as usize] != self.batch {
            self.nstamp[node as usize] = self.batch;
            d.link_keys.push(node);
        }
    }

    fn add(&mut self, node: u32, ts: i64) -> u32 {
        let c = self.customer_for(node);
        self.ncid[node as usize] = c;
        self.nfirst[node as usize] = ts;
        let uniq = if self.is_unique(node) { vec![(self.code(node), node)] } else { vec![] };
        self.roots[c as usize] = Some(Root { ts, key: node, uniq, size: 1 });
        self.members[c as usize] = vec![node];
        self.took_new(node);
        c
    }

    fn attach(&mut self, node: u32, ts: i64, c: u32) {
        self.ncid[node as usize] = c;
        self.nfirst[node as usize] = ts;
        self.members[c as usize].push(node);
        let code = self.code(node);
        let unique = self.is_unique(node);
        let root = self.roots[c as usize].as_mut().unwrap();
        if unique {
            set_uniq(&mut root.uniq, code, node);
        }
        root.size += 1;
        self.took_new(node);
    }

    fn move_customer(&mut self, src: u32, dst: u32) {
        if self.overlay {
            self.moves.push((src, dst));
        }
        let moved = std::mem::take(&mut self.members[src as usize]);
        for &k in &moved {
            self.ncid[k as usize] = dst;
        }
        self.members[dst as usize].extend(moved);
        let old = self.roots[src as usize].take().unwrap();
        match self.roots[dst as usize].take() {
            None => self.roots[dst as usize] = Some(old),
            Some(mut into) => {
                if self.earlier(old.ts, old.key, into.ts, into.key) {
                    into.ts = old.ts;
                    into.key = old.key;
                }
                for (code, k) in old.uniq {
                    set_uniq(&mut into.uniq, code, k);
                }
                into.size += old.size;
                self.roots[dst as usize] = Some(into);
            }
        }
    }

    /// Register a combination from its (kind code, ASCII value) pairs in kind order: each
    /// value normalized and hashed as `IdentityResolver.key_of` does, ignored placeholders left
    /// out. Returns (index, values ignored).
    fn combo_of_pairs(&mut self, pairs: &[(u8, &str)]) -> (usize, usize) {
        let mut nodes = Vec::with_capacity(pairs.len());
        let mut n_ignored = 0;
        for &(code, value) in pairs {
            let norm = python_strip(value);
            if norm.len() <= self.ignored_max && self.ignored.contains(&norm.to_ascii_lowercase()) {
                n_ignored += 1;
                continue;
            }
            let mut h = Sha256::new();
            h.update(&self.salt);
            h.update(kind_of(code).as_bytes());
            h.update(b":");
            if code == b'e' {
                h.update(norm.to_ascii_lowercase().as_bytes());
            } else {
                h.update(norm.as_bytes());
            }
            let digest = h.finalize();
            let mut key = [0u8; 65];
            key[0] = code;
            for (i, b) in digest.iter().enumerate() {
                key[1 + 2 * i] = HEX[(b >> 4) as usize];
                key[2 + 2 * i] = HEX[(b & 15) as usize];
            }
            // (ASCII: a kind code and hex digits)
            nodes.push(self.intern_key(std::str::from_utf8(&key).unwrap()));
        }
        self.combos.push(Combo::new(nodes, n_ignored));
        (self.combos.len() - 1, n_ignored)
    }

    /// The customers of the open batch's cached keys, each once, in order.
    fn customers_of_batch(&self) -> Vec<u32> {
        let mut out: Vec<u32> = Vec::new();
        let mut seen: HashSet<u32> = HashSet::new();
        for &k in &self.bnodes {
            let c = self.ncid[k as usize];
            if c != NONE && seen.insert(c) {
                out.push(c);
            }
        }
        out
    }

    /// A customer record as `encode_root` writes it (orjson, keys sorted):
    /// `[earliest_ts,"earliest_key",{"code":"key",...},size,"token"]`.
    fn record_json(&self, root: &Root, token: &str) -> String {
        let mut out = String::with_capacity(200);
        out.push('[');
        out.push_str(&root.ts.to_string());
        out.push(',');
        json_str(&mut out, &self.keys[root.key as usize]);
        out.push_str(",{");
        let mut uniq = root.uniq.clone();
        uniq.sort_unstable_by_key(|e| e.0);
        for (i, &(code, k)) in uniq.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            json_str(&mut out, &(code as char).to_string());
            out.push(':');
            json_str(&mut out, &self.keys[k as usize]);
        }
        out.push_str("},");
        out.push_str(&root.size.to_string());
        out.push(',');
        json_str(&mut out, token);
        out.push(']');
        out
    }

    fn saturated(&self, node: u32) -> bool {
        !self.is_unique(node) && 1 + self.nlinked[node as usize] >= self.max_linked
    }

    fn root(&self, c: u32) -> &Root {
        self.roots[c as usize].as_ref().unwrap()
    }

    /// Event `i`'s combination (`combos[i]`, time `ts[i]`) decided for every event of a batch,
    /// in event-time order (ties by event id) where the settled marks do not anchor it at once:
    /// (each event's anchor node, NONE when dead; the decision).
    fn decide_events(
        &mut self,
        py: Python<'_>,
        events: &Bound<'_, PyAny>,
        combos: &[usize],
        ts: &[i64],
    ) -> PyResult<(Vec<u32>, Decision)> {
        let n = combos.len();
        self.batch += 1;
        let batch = self.batch;
        // settled marks: each distinct combination once per batch
        for &ci in combos {
            if self.combos[ci].stamp == batch {
                continue;
            }
            let limit = match self.combos[ci].settled {
                Some(t) => t,
                None => {
                    let keys = &self.combos[ci].keys;
                    let mut limit = NEVER;
                    if let Some(&k0) = keys.first() {
                        let c0 = self.ncid[k0 as usize];
                        if c0 != NONE && keys.iter().all(|&k| self.ncid[k as usize] == c0) {
                            limit = keys.iter().map(|&k| self.nfirst[k as usize]).max().unwrap();
                            self.combos[ci].settled = Some(limit);
                        }
                    }
                    limit
                }
            };
            let c = &mut self.combos[ci];
            c.stamp = batch;
            c.limit = limit;
        }
        let mut anchors: Vec<u32> = Vec::with_capacity(n);
        let mut slow: Vec<usize> = Vec::new();
        for i in 0..n {
            let c = &self.combos[combos[i]];
            if ts[i] >= c.limit {
                anchors.push(c.first);
            } else {
                anchors.push(NONE);
                slow.push(i);
            }
        }
        let mut d = Decision::default();
        let ev_id = |i: usize| -> PyResult<String> {
            events.get_item(i)?.getattr(intern!(py, "event_id"))?.extract::<String>()
        };
        if !slow.is_empty() {
            slow.sort_by_key(|&i| ts[i]);
            let mut s = 0;
            while s < slow.len() {
                let mut e = s + 1;
                while e < slow.len() && ts[slow[e]] == ts[slow[s]] {
                    e += 1;
                }
                if e - s > 1 {
                    let mut run: Vec<(String, usize)> = Vec::with_capacity(e - s);
                    for &i in &slow[s..e] {
                        run.push((ev_id(i)?, i));
                    }
                    run.sort_by(|a, b| a.0.cmp(&b.0)); // stable: then input order
                    for (j, (_, i)) in run.into_iter().enumerate() {
                        slow[s + j] = i;
                    }
                }
                s = e;
            }
            for &i in &slow {
                let t = ts[i];
                let ci = combos[i];
                let nkeys = self.combos[ci].keys.len();
                if nkeys == 0 {
                    d.dead.push(i);
                    continue;
                }
                let k0 = self.combos[ci].keys[0];
                let c0 = self.ncid[k0 as usize];
                if c0 == NONE {
                    if nkeys == 1 {
                        self.add(k0, t);
                        self.link(&mut d, k0);
                        anchors[i] = k0;
                        continue;
                    }
                } else if t >= self.nfirst[k0 as usize] {
                    let keys = &self.combos[ci].keys;
                    if keys[1..]
                        .iter()
                        .all(|&k| self.ncid[k as usize] == c0 && t >= self.nfirst[k as usize])
                    {
                        anchors[i] = k0;
                        continue;
                    }
                }
                let keys = self.combos[ci].keys.clone();
                anchors[i] = self.apply_event(&mut d, i, t, &keys);
            }
        }
        Ok((anchors, d))
    }

    /// The combination of the raw combination `raw` (`push_raw`'s bytes, `h` its hash in
    /// `raw_ix`), if it has one: (index, values ignored).
    #[inline]
    fn combo_of_raw(&self, h: u64, raw: &[u8]) -> Option<(usize, usize)> {
        let bytes = &self.raw_bytes;
        let slot = self.raw_ix.find(h, raw, |_, start| raw_at(bytes, start))?;
        let ci = slot.at as usize;
        Some((ci, self.combos[ci].n_ignored as usize))
    }

    /// Index the raw combination `raw` as combination `ci`'s (its bytes kept in `raw_bytes`;
    /// not indexed past 4 GiB of them: the combination is then made again when next seen).
    fn index_raw(&mut self, raw: &[u8], ci: usize) {
        let start = self.raw_bytes.len();
        if start + 4 + raw.len() > u32::MAX as usize || ci >= NONE as usize {
            return;
        }
        self.raw_bytes.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        self.raw_bytes.extend_from_slice(raw);
        let bytes = &self.raw_bytes;
        self.raw_ix.insert(raw, ci as u32, start as u32, |_, start| raw_at(bytes, start));
    }

    /// Ask for what `decide_batch` reads to make the resolved event of the events ahead of
    /// `i` (each one's customer name is three loads on from its anchor: the node's customer,
    /// the name's slot, the name object), each load a chunk before the next one needs it.
    #[inline]
    fn warm_resolved(&self, events: &Bound<'_, PyList>, anchors: &[u32], i: usize) {
        let cid_at = |j: usize| match anchors.get(j) {
            Some(&a) if a != NONE => self.ncid.get(a as usize).copied(),
            _ => None,
        };
        if let Some(&a) = anchors.get(i + 2 * WARM) {
            if a != NONE {
                prefetch(self.ncid.as_ptr().wrapping_add(a as usize));
            }
        }
        let j = i + WARM;
        if j < anchors.len() {
            if let Some(c) = cid_at(j) {
                prefetch(self.cpy.as_ptr().wrapping_add(c as usize));
            }
            if j < events.len() {
                // (a borrowed item, its object not touched; the list's length now: a slot's
                // setter may have run Python code)
                prefetch(unsafe { ffi::PyList_GET_ITEM(events.as_ptr(), j as ffi::Py_ssize_t) });
            }
            if let Some(t) = self.bts_obj.get(j) {
                prefetch(t.as_ptr());
            }
        }
        if let Some(Some(name)) = cid_at(i + WARM / 2).and_then(|c| self.cpy.get(c as usize)) {
            prefetch(name.as_ptr());
        }
    }

    fn apply_event(&mut self, d: &mut Decision, ev: usize, ts: i64, keys: &[u32]) -> u32 {
        let mut fresh: Vec<u32> = Vec::new();
        for &key in keys {
            let c = self.ncid[key as usize];
            if c == NONE {
                fresh.push(key);
                self.link(d, key);
                continue;
            }
            if ts < self.nfirst[key as usize] {
                self.nfirst[key as usize] = ts;
                self.wrote(key);
                self.link(d, key);
                let (rts, rkey) = {
                    let r = self.root(c);
                    (r.ts, r.key)
                };
                if self.earlier(ts, key, rts, rkey) {
                    {
                        let r = self.roots[c as usize].as_mut().unwrap();
                        r.ts = ts;
                        r.key = key;
                    }
                    let new_c = self.customer_for(key);
                    if new_c != c {
                        self.move_customer(c, new_c);
                        d.merges.push(Merge { loser: c, winner: new_c, ev, ts, shared: false });
                    }
                }
            }
        }
        let mut known: Vec<u32> = Vec::with_capacity(keys.len());
        for &k in keys {
            let c = self.ncid[k as usize];
            if c != NONE && !known.contains(&c) {
                known.push(c);
            }
        }
        if fresh.is_empty() {
            if known.len() == 1 {
                return keys[0];
            }
            return self.fold(d, ev, ts, keys, &fresh);
        }
        if known.len() <= 1 && self.join_fresh(&known, &fresh, ts) {
            return keys[0];
        }
        for &key in &fresh {
            self.add(key, ts);
        }
        self.fold(d, ev, ts, keys, &fresh)
    }

    fn join_fresh(&mut self, known: &[u32], fresh: &[u32], ts: i64) -> bool {
        let target;
        if let Some(&t) = known.first() {
            target = t;
            let root = self.root(t);
            for &key in fresh {
                let code = self.code(key);
                if root.uniq.iter().any(|&(c, _)| c == code)
                    || self.earlier(ts, key, root.ts, root.key)
                {
                    return false;
                }
            }
        } else {
            if fresh.len() == 1 {
                self.add(fresh[0], ts);
                return true;
            }
            let smallest =
                *fresh.iter().min_by(|&&a, &&b| self.keys[a as usize].cmp(&self.keys[b as usize])).unwrap();
            target = self.add(smallest, ts);
        }
        for &key in fresh {
            if self.ncid[key as usize] == NONE {
                self.attach(key, ts, target);
            }
        }
        true
    }

    fn fold(&mut self, d: &mut Decision, ev: usize, ts: i64, keys: &[u32], fresh: &[u32]) -> u32 {
        // customer -> its keys among the event's, in the event's key order
        let mut groups: Vec<(u32, Vec<u32>)> = Vec::new();
        for &key in keys {
            let c = self.ncid[key as usize];
            match groups.iter_mut().find(|g| g.0 == c) {
                Some(g) => g.1.push(key),
                None => groups.push((c, vec![key])),
            }
        }
        let strength = |s: &Self, g: &(u32, Vec<u32>)| {
            let best = g.1.iter().map(|&k| (s.saturated(k), rank(s.code(k)))).min().unwrap();
            let r = s.root(g.0);
            (best, r.ts, r.key)
        };
        let mut keyed: Vec<((bool, u8), i64, u32, usize)> = groups
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let (b, t, k) = strength(self, g);
                (b, t, k, i)
            })
            .collect();
        keyed.sort_by(|x, y| {
            x.0.cmp(&y.0)
                .then(x.1.cmp(&y.1))
                .then_with(|| self.keys[x.2 as usize].cmp(&self.keys[y.2 as usize]))
                .then(x.3.cmp(&y.3))
        });
        let ordered: Vec<&(u32, Vec<u32>)> = keyed.iter().map(|x| &groups[x.3]).collect();
        let first_keys = &ordered[0].1;
        let mut anchor = first_keys[0];
        for &k in first_keys.iter() {
            if rank(self.code(k)) < rank(self.code(anchor)) {
                anchor = k;
            }
        }
        let mut group_keys: Vec<u32> = first_keys.clone();
        let mut group_known = !group_keys.iter().all(|k| fresh.contains(k));
        for &(_, comp_keys) in &ordered[1..] {
            let comp_keys = comp_keys.clone();
            let cid = self.ncid[comp_keys[0] as usize];
            let group_cid = self.ncid[group_keys[0] as usize];
            if cid == group_cid {
                group_keys.extend(comp_keys);
                continue;
            }
            let (g_root, c_root) = (self.root(group_cid), self.root(cid));
            let mut clash: Vec<u32> = Vec::new();
            for &(code, key) in &c_root.uniq {
                if let Some(&(_, gk)) = g_root.uniq.iter().find(|&&(c, _)| c == code) {
                    if gk != key {
                        clash.push(gk);
                        clash.push(key);
                    }
                }
            }
            if !clash.is_empty() {
                d.conflicts.push(Clash { unique: true, ev, ts, a: group_cid, b: cid, hashes: clash });
                continue;
            }
            let comp_known = !comp_keys.iter().all(|k| fresh.contains(k));
            if group_known && comp_known {
                let g_ok: Vec<u32> = group_keys.iter().copied().filter(|&k| !self.saturated(k)).collect();
                let c_ok: Vec<u32> = comp_keys.iter().copied().filter(|&k| !self.saturated(k)).collect();
                if g_ok.is_empty() || c_ok.is_empty() {
                    let blocked: Vec<u32> = group_keys
                        .iter()
                        .chain(comp_keys.iter())
                        .copied()
                        .filter(|&k| self.saturated(k))
                        .collect();
                    d.conflicts.push(Clash { unique: false, ev, ts, a: group_cid, b: cid, hashes: blocked });
                    continue;
                }
                for k in g_ok.into_iter().chain(c_ok) {
                    if !self.is_unique(k) {
                        self.nlinked[k as usize] += 1;
                        self.wrote(k);
                    }
                }
            }
            let (g_ts, g_key) = (self.root(group_cid).ts, self.root(group_cid).key);
            let (c_ts, c_key) = (self.root(cid).ts, self.root(cid).key);
            let (winner, loser, loser_known) = if self.earlier(c_ts, c_key, g_ts, g_key) {
                (cid, group_cid, group_known)
            } else {
                (group_cid, cid, comp_known)
            };
            self.move_customer(loser, winner);
            if loser_known {
                let winner_known = if winner == cid { comp_known } else { group_known };
                d.merges.push(Merge { loser, winner, ev, ts, shared: winner_known });
            }
            group_keys.extend(comp_keys);
            group_known = group_known || comp_known;
        }
        anchor
    }
}

/// `IDENTITY_KINDS` order (anonymous, device, user, email, crm): `Identities.items()`'s.
fn kind_order(code: u8) -> u8 {
    match code {
        b'a' => 0,
        b'd' => 1,
        b'u' => 2,
        b'e' => 3,
        _ => 4,
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn code_of(kind: &str) -> Option<u8> {
    Some(match kind {
        "anonymous_id" => b'a',
        "device_id" => b'd',
        "user_id" => b'u',
        "email" => b'e',
        "crm_id" => b'k',
        _ => return None,
    })
}

/// Python's `str.strip()` of an ASCII string: its whitespace includes \x1c-\x1f.
fn python_strip(s: &str) -> &str {
    s.trim_matches(|c: char| matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c' | '\x1c'..='\x1f'))
}

fn set_uniq(uniq: &mut Vec<(u8, u32)>, code: u8, node: u32) {
    match uniq.iter_mut().find(|e| e.0 == code) {
        Some(e) => e.1 = node,
        None => uniq.push((code, node)),
    }
}

/// `ids`' (kind code, value) pairs into `out`: how many, or None when a key or value is not a
/// str, a kind is unknown, a value is not ASCII, or there are more than `out` holds (Python
/// decides those).
fn identity_pairs<'a>(ids: &'a Bound<'_, PyDict>, out: &mut [(u8, &'a str); 5]) -> Option<usize> {
    let mut n = 0;
    let mut pos: ffi::Py_ssize_t = 0;
    let mut k: *mut ffi::PyObject = std::ptr::null_mut();
    let mut v: *mut ffi::PyObject = std::ptr::null_mut();
    // Borrowed references, the dict's own: valid while `ids` lives and nothing changes it
    // (nothing runs Python code in between).
    while unsafe { ffi::PyDict_Next(ids.as_ptr(), &mut pos, &mut k, &mut v) } != 0 {
        if n == out.len() {
            return None;
        }
        let (kind, value) = match unsafe { (str_of(k), str_of(v)) } {
            (Some(kind), Some(value)) => (kind, value),
            _ => return None,
        };
        match code_of(kind) {
            Some(code) if value.is_ascii() => out[n] = (code, value),
            _ => return None,
        }
        n += 1;
    }
    Some(n)
}

/// A str object's UTF-8 (cached in the object by CPython), or None for another type or a str
/// that has no UTF-8 form (lone surrogates).
unsafe fn str_of<'a>(o: *mut ffi::PyObject) -> Option<&'a str> {
    if ffi::PyUnicode_Check(o) == 0 {
        return None;
    }
    let mut size: ffi::Py_ssize_t = 0;
    let p = ffi::PyUnicode_AsUTF8AndSize(o, &mut size);
    if p.is_null() {
        ffi::PyErr_Clear();
        return None;
    }
    Some(std::str::from_utf8_unchecked(std::slice::from_raw_parts(p as *const u8, size as usize)))
}

/// Ask for what `prepare_batch` reads of the events a chunk or more ahead of `at` (of `n`),
/// each load a chunk ahead of the next one that depends on it: the objects three chunks on,
/// their instance dicts two chunks on, the dicts' key tables (where `identities` and `ts_ms`
/// are) one chunk on. Only where the instance dict is where CPython 3.11 keeps it.
fn warm_events(events: &Bound<'_, PyList>, at: usize, n: usize) {
    let list = events.as_ptr();
    let item = |j: usize| unsafe { ffi::PyList_GET_ITEM(list, j as ffi::Py_ssize_t) };
    // (borrowed items; nothing here runs Python code or changes an object)
    unsafe {
        for j in (at + 3 * WARM)..(at + 4 * WARM).min(n) {
            let p = item(j) as *const u8;
            prefetch(p);
            prefetch(p.wrapping_sub(32)); // (a managed dict's pointer sits before the object)
        }
        for j in (at + 2 * WARM)..(at + 3 * WARM).min(n) {
            if let Some(d) = instance_dict(item(j)) {
                prefetch(d);
            }
        }
        for j in (at + WARM)..(at + 2 * WARM).min(n) {
            if let Some(d) = instance_dict(item(j)) {
                let keys = (*(d as *mut ffi::PyDictObject)).ma_keys as *const u8;
                for line in 0..4 {
                    prefetch(keys.wrapping_add(64 * line));
                }
            }
        }
    }
}

/// The instance dict of `ob` (CPython 3.11) where it has one already (not made here), else
/// None.
unsafe fn instance_dict(ob: *mut ffi::PyObject) -> Option<*mut ffi::PyObject> {
    let t = ffi::Py_TYPE(ob);
    if (*t).tp_flags & (1 << 4) != 0 {
        // Py_TPFLAGS_MANAGED_DICT (3.11): the dict pointer three words before the object
        // (the inline values' pointer four before)
        let words = ob as *mut *mut ffi::PyObject;
        let d = *words.offset(-3);
        return if d.is_null() { None } else { Some(d) };
    }
    None
}

/// The raw combination stored at `start` in `raw_bytes` (after its length).
#[inline]
fn raw_at(bytes: &[u8], start: u32) -> &[u8] {
    let start = start as usize;
    let mut n = [0u8; 4];
    n.copy_from_slice(&bytes[start..start + 4]);
    &bytes[start + 4..start + 4 + u32::from_le_bytes(n) as usize]
}

/// A combination's key in `raw_ix` (its raw combination), after what `buf` holds: each of
/// `pairs`' kind code, value length and value.
fn push_raw(buf: &mut Vec<u8>, pairs: &[(u8, &str)]) {
    for &(code, value) in pairs {
        buf.push(code);
        buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
        buf.extend_from_slice(value.as_bytes());
    }
}

/// The (kind code, value) pairs of a raw combination (`push_raw`'s bytes of ASCII values)
/// into `out`: how many.
fn pairs_of_raw<'a>(raw: &'a [u8], out: &mut [(u8, &'a str); 5]) -> usize {
    let (mut n, mut i) = (0, 0);
    while i < raw.len() && n < out.len() {
        let mut len = [0u8; 4];
        len.copy_from_slice(&raw[i + 1..i + 5]);
        let stop = i + 5 + u32::from_le_bytes(len) as usize;
        // (ASCII: `identity_pairs` took only ASCII values)
        out[n] = (raw[i], std::str::from_utf8(&raw[i + 5..stop]).unwrap());
        n += 1;
        i = stop;
    }
    n
}

/// Append `item` to a '\n'-joined section.
fn push_item(out: &mut String, item: &str) {
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(item);
}

/// `s` as a JSON string the way orjson writes it (UTF-8 kept, control characters escaped).
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[pymethods]
impl NativeIdentityCore {
    /// `overlay`: the core holds the Redis store's worker cache (see `overlay_open`), not the
    /// whole graph.
    #[new]
    #[pyo3(signature = (unique_codes, max_linked, salt, ignored, overlay=false))]
    fn new(unique_codes: &str, max_linked: i64, salt: &str, ignored: Vec<String>, overlay: bool) -> Self {
        let mut unique = [false; 128];
        for b in unique_codes.bytes() {
            unique[b as usize] = true;
        }
        NativeIdentityCore {
            salt: salt.as_bytes().to_vec(),
            ignored_max: ignored.iter().map(|v| v.len()).max().unwrap_or(0),
            ignored: ignored.into_iter().collect(),
            unique,
            max_linked,
            keys: Vec::new(),
            key_ix: HashIndex::default(),
            ncid: Vec::new(),
            nfirst: Vec::new(),
            nlinked: Vec::new(),
            nstamp: Vec::new(),
            cnames: Vec::new(),
            cix: HashIndex::default(),
            cpy: Vec::new(),
            roots: Vec::new(),
            members: Vec::new(),
            combos: Vec::new(),
            batch: 0,
            raw_ix: HashIndex::default(),
            raw_bytes: Vec::new(),
            raw_buf: Vec::new(),
            bcombos: Vec::new(),
            bts: Vec::new(),
            bts_obj: Vec::new(),
            overlay,
            n_nodes: 0,
            nstored: Vec::new(),
            nwrote: Vec::new(),
            nopen: Vec::new(),
            crec: Vec::new(),
            ostamp: 0,
            bnodes: Vec::new(),
            used: Vec::new(),
            written: Vec::new(),
            moves: Vec::new(),
            new_keys: Vec::new(),
            pending: Pending::default(),
        }
    }

    /// Register an identity combination (its node keys, in kind order); returns its index.
    fn add_combo(&mut self, keys: Vec<String>) -> usize {
        let nodes = keys.iter().map(|k| self.intern_key(k)).collect();
        self.combos.push(Combo::new(nodes, 0));
        self.combos.len() - 1
    }

    /// Register a combination from its raw (kind, value) pairs in kind order, hashing them as
    /// `IdentityResolver.key_of` does: returns (index, node keys, values ignored), or None when
    /// a value is not ASCII (Python's `strip` and `lower` then decide; see `python_strip`).
    fn add_combo_raw(&mut self, pairs: Vec<(String, String)>) -> Option<(usize, Vec<String>, usize)> {
        if pairs.iter().any(|(_, v)| !v.is_ascii()) {
            return None;
        }
        let mut coded: Vec<(u8, &str)> = Vec::with_capacity(pairs.len());
        for (kind, value) in &pairs {
            coded.push((code_of(kind)?, value.as_str()));
        }
        let (index, n_ignored) = self.combo_of_pairs(&coded);
        let keys = self.combos[index].keys.iter().map(|&k| self.keys[k as usize].clone()).collect();
        Some((index, keys, n_ignored))
    }

    /// Read a batch of events (`TouchpointEvent`s) for `decide_batch`, each event's `__dict__`
    /// once: its identity combination, looked up by its (kind, value) pairs in kind order
    /// (registered and hashed when new), and with `times` its `ts_ms` (as `event_times_ms`:
    /// the cached value, else computed and cached in the event). Returns the values ignored
    /// over the events with a combination and the positions of those without one (a value is
    /// not ASCII or not a str): Python makes theirs (`set_combo`).
    #[pyo3(signature = (events, times=true))]
    fn prepare_batch(&mut self, events: &Bound<'_, PyList>, times: bool) -> PyResult<(usize, Vec<usize>)> {
        let py = events.py();
        let n = events.len();
        self.bcombos.clear();
        self.bts.clear();
        self.bts_obj.clear();
        self.bcombos.reserve(n);
        if times {
            self.bts.reserve(n);
            self.bts_obj.reserve(n);
        }
        let kinds = fixed_tz_kinds(py)?;
        let ids_name = intern!(py, "identities");
        let mut last: Option<(Bound<'_, PyAny>, i64)> = None;
        let mut missing: Vec<usize> = Vec::new();
        let mut n_ignored = 0usize;
        let mut raw = std::mem::take(&mut self.raw_buf);
        // In chunks of WARM events: each one's raw combination and its hash first, asking for
        // its slot in `raw_ix`, then for what the slot points at (the stored bytes and the
        // combination), then the lookups: the misses of a chunk overlap instead of following
        // one another (the tables of 170k customers are far bigger than the caches).
        let mut marks: Vec<Option<(usize, usize, u64)>> = Vec::with_capacity(WARM);
        let warm = {
            let v = py.version_info();
            v.major == 3 && v.minor == 11 // (where `instance_dict` knows the layout)
        };
        let mut at = 0;
        let mut items = events.iter();
        while at < n {
            let end = (at + WARM).min(n);
            raw.clear();
            marks.clear();
            if warm {
                // (the list's length now: Python code that an event's `ts_ms` ran may change it)
                warm_events(events, at, events.len());
            }
            for _ in at..end {
                let ev = match items.next() {
                    Some(ev) => ev,
                    None => break, // (the list shrank: nothing runs Python code that could)
                };
                let d = dict_of(&ev);
                let ids = match d.as_ref().map(|d| d.get_item(ids_name)).transpose()?.flatten() {
                    Some(ids) => ids,
                    None => ev.getattr(ids_name)?,
                };
                let mut pairs: [(u8, &str); 5] = [(0, ""); 5];
                let found = match ids.downcast::<PyDict>() {
                    Ok(ids) => identity_pairs(ids, &mut pairs),
                    Err(_) => None,
                };
                marks.push(found.map(|k| {
                    let pairs = &mut pairs[..k];
                    pairs.sort_unstable_by_key(|p| kind_order(p.0));
                    let start = raw.len();
                    push_raw(&mut raw, pairs);
                    let h = self.raw_ix.hash(&raw[start..]);
                    self.raw_ix.prefetch(h);
                    (start, raw.len(), h)
                }));
                if times {
                    let (ms, ts) = event_time(&ev, d.as_ref(), kinds, &mut last)?;
                    self.bts.push(ms);
                    self.bts_obj.push(ts.unbind());
                }
            }
            for &(_, _, h) in marks.iter().flatten() {
                if let Some(slot) = self.raw_ix.first_slot(h) {
                    prefetch(self.raw_bytes.as_ptr().wrapping_add(slot.aux as usize));
                    prefetch(self.combos.as_ptr().wrapping_add(slot.at as usize));
                }
            }
            for (k, mark) in marks.iter().enumerate() {
                let hit = mark.map(|(start, stop, h)| {
                    let r = &raw[start..stop];
                    self.combo_of_raw(h, r).unwrap_or_else(|| {
                        let mut pairs: [(u8, &str); 5] = [(0, ""); 5];
                        let k = pairs_of_raw(r, &mut pairs);
                        let hit = self.combo_of_pairs(&pairs[..k]);
                        self.index_raw(r, hit.0);
                        hit
                    })
                });
                match hit {
                    Some((index, ignored)) => {
                        self.bcombos.push(index);
                        n_ignored += ignored;
                    }
                    None => {
                        self.bcombos.push(usize::MAX);
                        missing.push(at + k);
                    }
                }
            }
            at = end;
        }
        self.raw_buf = raw;
        Ok((n_ignored, missing))
    }

    /// Event `i` of the prepared batch has combination `index` (one Python made).
    fn set_combo(&mut self, i: usize, index: usize) -> PyResult<()> {
        if index >= self.combos.len() {
            return Err(pyo3::exceptions::PyIndexError::new_err("no such combination"));
        }
        match self.bcombos.get_mut(i) {
            Some(c) => *c = index,
            None => return Err(pyo3::exceptions::PyIndexError::new_err("no such event in the batch")),
        }
        Ok(())
    }

    /// The batch's combinations, one per event, made by Python (instead of `prepare_batch`).
    fn set_combos(&mut self, combos: Vec<usize>) {
        self.bcombos = combos;
    }

    /// The batch's event times, computed by Python (`prepare_batch` with `times` false).
    fn set_times(&mut self, ts_list: &Bound<'_, PyList>) -> PyResult<()> {
        self.bts = ts_list.extract()?;
        self.bts_obj = ts_list.iter().map(|t| t.unbind()).collect();
        Ok(())
    }

    /// The prepared batch's combination per event (what the store's `begin` takes).
    fn batch_combos(&self) -> Vec<usize> {
        self.bcombos.clone()
    }

    /// Decide the prepared batch of `events` (the list given to `prepare_batch`) and commit
    /// it to the graph. Returns (the `resolved_type`s of the events not dead, in input order;
    /// the merges as `merge_type`s, numbered from `merge_seq` + 1, or 0 when None; the
    /// conflicts as `conflict_type`s; the links as `link_type`s; the positions of the dead
    /// events). The record types are `processors.identity`'s named tuples.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (events, resolved_type, merge_type, conflict_type, link_type, merge_seq=None))]
    fn decide_batch(
        &mut self,
        py: Python<'_>,
        events: &Bound<'_, PyList>,
        resolved_type: &Bound<'_, PyType>,
        merge_type: &Bound<'_, PyType>,
        conflict_type: &Bound<'_, PyType>,
        link_type: &Bound<'_, PyType>,
        merge_seq: Option<i64>,
    ) -> PyResult<(PyObject, PyObject, PyObject, PyObject, Vec<usize>)> {
        let n = self.bcombos.len();
        if events.len() != n || self.bts.len() != n || self.bts_obj.len() != n {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "decide_batch: the events are not the prepared batch (prepare_batch, set_times)",
            ));
        }
        if self.bcombos.iter().any(|&c| c >= self.combos.len()) {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "decide_batch: an event has no combination (set_combo)",
            ));
        }
        let make = SlotMaker::new(resolved_type, &["customer_id", "event", "segment", "ts_ms"])?;
        let merge_t =
            TupleMaker::new(merge_type, &["loser", "winner", "evidence_event_id", "ts_ms", "reason", "seq"])?;
        let conflict_t = TupleMaker::new(
            conflict_type,
            &["reason", "event_id", "ts_ms", "customer_a", "customer_b", "id_hashes"],
        )?;
        let link_t = TupleMaker::new(link_type, &["customer_id", "kind", "id_hash", "first_seen_ms"])?;
        let combos = std::mem::take(&mut self.bcombos);
        let ts = std::mem::take(&mut self.bts);
        let decided = self.decide_events(py, events.as_any(), &combos, &ts);
        self.bcombos = combos;
        self.bts = ts;
        let (anchors, d) = decided?;
        let all = intern!(py, "all");
        let mut resolved: Vec<PyObject> = Vec::with_capacity(n - d.dead.len());
        for (i, &a) in anchors.iter().enumerate() {
            self.warm_resolved(events, &anchors, i);
            if a != NONE {
                let cid = self.cid_py(py, self.ncid[a as usize]).into_bound(py).into_any();
                let ev = events.get_item(i)?;
                resolved.push(make.make(&[&cid, &ev, all.as_any(), self.bts_obj[i].bind(py)])?.unbind());
            }
        }
        let event_id = |i: usize| -> PyResult<PyObject> {
            Ok(events.get_item(i)?.getattr(intern!(py, "event_id"))?.unbind())
        };
        let mut merges: Vec<PyObject> = Vec::with_capacity(d.merges.len());
        for (k, m) in d.merges.iter().enumerate() {
            let reason = if m.shared { intern!(py, "shared_identifier") } else { intern!(py, "earlier_evidence") };
            let seq = merge_seq.map_or(0, |s| s + 1 + k as i64);
            merges.push(merge_t.make(vec![
                self.cid_py(py, m.loser).into_any(),
                self.cid_py(py, m.winner).into_any(),
                event_id(m.ev)?,
                m.ts.into_py(py),
                reason.clone().into_any().unbind(),
                seq.into_py(py),
            ])?);
        }
        let mut conflicts: Vec<PyObject> = Vec::with_capacity(d.conflicts.len());
        for c in &d.conflicts {
            let mut hashes: Vec<&str> = c.hashes.iter().map(|&k| &self.keys[k as usize][1..]).collect();
            hashes.sort();
            let hashes = PyTuple::new_bound(py, hashes).into_any().unbind();
            let reason = if c.unique { intern!(py, "unique_kind") } else { intern!(py, "max_customers") };
            let (a, b) = (self.cid_py(py, c.a).into_any(), self.cid_py(py, c.b).into_any());
            conflicts.push(conflict_t.make(vec![
                reason.clone().into_any().unbind(),
                event_id(c.ev)?,
                c.ts.into_py(py),
                a,
                b,
                hashes,
            ])?);
        }
        let mut links: Vec<PyObject> = Vec::with_capacity(d.link_keys.len());
        for &k in &d.link_keys {
            let cid = self.cid_py(py, self.ncid[k as usize]).into_any();
            let key = &self.keys[k as usize];
            links.push(link_t.make(vec![
                cid,
                kind_py(py, key.as_bytes()[0]).clone().into_any().unbind(),
                PyString::new_bound(py, &key[1..]).into_any().unbind(),
                self.nfirst[k as usize].into_py(py),
            ])?);
        }
        Ok((
            PyList::new_bound(py, resolved).into_any().unbind(),
            PyList::new_bound(py, merges).into_any().unbind(),
            PyList::new_bound(py, conflicts).into_any().unbind(),
            PyList::new_bound(py, links).into_any().unbind(),
            d.dead,
        ))
    }

    // -- overlay mode: the Redis store's worker cache (sinks/identity_redis.py, `_NativeCache`) --

    /// Forget the whole graph and every settled mark (the store dropped its cache); interned
    /// keys and combinations stay valid.
    fn overlay_reset(&mut self) {
        for c in self.ncid.iter_mut() {
            *c = NONE;
        }
        for s in self.nstored.iter_mut() {
            *s = None;
        }
        // (a node that is new again starts as a new one: no first-seen time, no links)
        for f in self.nfirst.iter_mut() {
            *f = 0;
        }
        for n in self.nlinked.iter_mut() {
            *n = 0;
        }
        for r in self.roots.iter_mut() {
            *r = None;
        }
        for m in self.members.iter_mut() {
            m.clear();
        }
        for r in self.crec.iter_mut() {
            *r = None;
        }
        for c in self.combos.iter_mut() {
            c.settled = None;
            c.stamp = 0;
        }
        self.n_nodes = 0;
        self.written.clear();
        self.moves.clear();
        self.new_keys.clear();
        self.used.clear();
        self.pending = Pending::default();
    }

    /// How many node keys are interned (cached or not): the resolver bounds them.
    fn n_keys(&self) -> usize {
        self.keys.len()
    }

    /// Forget every interned key, customer name and combination; the graph must be empty
    /// (`overlay_reset` first). Combination indices handed out before are invalid after this.
    fn forget_keys(&mut self) -> PyResult<()> {
        if self.n_nodes != 0 {
            return Err(pyo3::exceptions::PyValueError::new_err("forget_keys needs an empty graph"));
        }
        self.clear_combos();
        self.keys.clear();
        self.key_ix.clear();
        self.ncid.clear();
        self.nfirst.clear();
        self.nlinked.clear();
        self.nstamp.clear();
        self.nstored.clear();
        self.nwrote.clear();
        self.nopen.clear();
        self.cnames.clear();
        self.cix.clear();
        self.cpy.clear();
        self.roots.clear();
        self.members.clear();
        self.crec.clear();
        self.bnodes.clear();
        Ok(())
    }

    /// Open a batch whose events have combinations `combos`: its node keys are theirs (each
    /// once, in order, as the Python resolver gathers them); the change log starts empty.
    fn overlay_open(&mut self, combos: Vec<usize>) -> PyResult<()> {
        if !self.overlay {
            return Err(pyo3::exceptions::PyValueError::new_err("not an overlay core"));
        }
        self.ostamp += 1;
        let stamp = self.ostamp;
        self.bnodes.clear();
        let mut seen: HashSet<usize> = HashSet::with_capacity(combos.len());
        for ci in combos {
            if ci >= self.combos.len() {
                return Err(pyo3::exceptions::PyIndexError::new_err("no such combination"));
            }
            if !seen.insert(ci) {
                continue;
            }
            for &k in &self.combos[ci].keys {
                if self.nopen[k as usize] != stamp {
                    self.nopen[k as usize] = stamp;
                    self.bnodes.push(k);
                }
            }
        }
        self.written.clear();
        self.moves.clear();
        self.new_keys.clear();
        self.used.clear();
        Ok(())
    }

    /// How many nodes the graph holds (the store's cache size).
    fn overlay_len(&self) -> usize {
        self.n_nodes
    }

    /// The open batch's node keys: (all, those not cached, those cached).
    fn overlay_batch(&self) -> (Vec<&str>, Vec<&str>, Vec<&str>) {
        let all = self.bnodes.iter().map(|&k| self.keys[k as usize].as_str()).collect();
        let (mut missing, mut cached) = (Vec::new(), Vec::new());
        for &k in &self.bnodes {
            let key = self.keys[k as usize].as_str();
            if self.ncid[k as usize] == NONE {
                missing.push(key);
            } else {
                cached.push(key);
            }
        }
        (all, missing, cached)
    }

    /// Note the cached customers of the batch's cached keys (before deciding: the commit's
    /// checks name them).
    fn overlay_note_used(&mut self) {
        self.used = self.customers_of_batch();
        self.written.clear();
    }

    /// The token checks ("customer\ntoken\n..."): the cached customers the batch may read or
    /// write, those of its cached keys (as noted by `overlay_note_used` when `noted`, else as of
    /// now) and any cached customer named after one of its keys.
    fn overlay_checks(&self, noted: bool) -> String {
        let mut used = if noted { self.used.clone() } else { self.customers_of_batch() };
        let mut seen: HashSet<u32> = used.iter().copied().collect();
        for &k in &self.bnodes {
            let name = format!("c_{}", &self.keys[k as usize][1..17]);
            if let Some(c) = self.slot_named(&name) {
                if self.crec[c as usize].is_some() && seen.insert(c) {
                    used.push(c);
                }
            }
        }
        let mut out = String::with_capacity(used.len() * 52);
        for (i, &c) in used.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(&self.cnames[c as usize]);
            out.push('\n');
            out.push_str(&self.crec[c as usize].as_ref().unwrap().token);
        }
        out
    }

    /// The token of each customer's cached record (None: not cached).
    fn overlay_tokens(&self, cids: Vec<String>) -> Vec<Option<&str>> {
        cids.iter()
            .map(|c| {
                let s = self.slot_named(c)?;
                self.crec[s as usize].as_ref().map(|r| r.token.as_str())
            })
            .collect()
    }

    /// Put what a Redis read returned into the graph (`_CachedGraph._load` does the same):
    /// records of customers not cached, [(customer, earliest_ts, earliest_key, [(code, key)],
    /// size, token)], then nodes [(key, customer, first_seen, n_linked)], each appended to its
    /// customer's (cached) members.
    #[allow(clippy::type_complexity)]
    fn overlay_load(
        &mut self,
        roots: Vec<(String, i64, String, Vec<(String, String)>, i64, String)>,
        nodes: Vec<(String, String, i64, i64)>,
    ) -> PyResult<()> {
        let bad = |what: &str| pyo3::exceptions::PyValueError::new_err(format!("overlay_load: {what}"));
        for (cid, ts, key, uniq, size, token) in roots {
            let c = self.slot_of(&cid);
            let key = self.stored_key(&key).ok_or_else(|| bad("a node key is not a kind code and a hash"))?;
            let mut u: Vec<(u8, u32)> = Vec::with_capacity(uniq.len());
            for (code, k) in &uniq {
                let k = self.stored_key(k).ok_or_else(|| bad("a node key is not a kind code and a hash"))?;
                let code = *code.as_bytes().first().ok_or_else(|| bad("an empty kind code"))?;
                set_uniq(&mut u, code, k);
            }
            self.roots[c as usize] = Some(Root { ts, key, uniq: u.clone(), size });
            self.crec[c as usize] = Some(Rec { token, ts, key, uniq: u, size });
            self.members[c as usize].clear();
        }
        for (key, cid, first, linked) in nodes {
            let n = self.stored_key(&key).ok_or_else(|| bad("a node key is not a kind code and a hash"))?;
            let c = self.slot_of(&cid);
            if self.roots[c as usize].is_none() {
                return Err(bad("a node's customer has no record"));
            }
            self.place_node(n, c, first, linked);
            self.nstored[n as usize] = Some((first, linked));
            self.members[c as usize].push(n);
        }
        Ok(())
    }

    /// Whether the open batch has no node key.
    fn overlay_batch_empty(&self) -> bool {
        self.bnodes.is_empty()
    }

    /// The commit's sections for the decision made since `overlay_open`, records stamped
    /// `token`: (new keys, moves, node sets, member adds, root sets, root deletes), each
    /// '\n'-joined as `identity_commit.lua` takes them (what `_CachedGraph.sections` builds).
    fn overlay_sections(&mut self, token: &str) -> (String, String, String, String, String, String) {
        let mut pending = Pending::default();
        // nodes whose (first_seen, n_linked) differ from Redis's, and their customers
        let mut node_sets = String::new();
        let mut dirty: Vec<u32> = Vec::new();
        let mut is_dirty: HashSet<u32> = HashSet::new();
        for &k in &self.written {
            let (f, n) = (self.nfirst[k as usize], self.nlinked[k as usize]);
            if self.nstored[k as usize] == Some((f, n)) {
                continue;
            }
            let c = self.ncid[k as usize];
            push_item(&mut node_sets, &self.keys[k as usize]);
            push_item(&mut node_sets, &format!("{}|{}|{}", self.cnames[c as usize], f, n));
            pending.states.push((k, f, n));
            if is_dirty.insert(c) {
                dirty.push(c);
            }
        }
        let mut candidates = dirty.clone();
        let mut is_candidate = is_dirty.clone();
        for &(_, dst) in &self.moves {
            if is_candidate.insert(dst) {
                candidates.push(dst);
            }
        }
        let mut root_sets = String::new();
        for &c in &candidates {
            let root = match self.roots[c as usize].as_ref() {
                Some(r) => r,
                None => continue, // moved on again later in the batch
            };
            let same = match self.crec[c as usize].as_ref() {
                Some(was) => {
                    was.ts == root.ts
                        && was.key == root.key
                        && was.size == root.size
                        && was.uniq.len() == root.uniq.len()
                        && was.uniq.iter().all(|e| root.uniq.contains(e))
                }
                None => false,
            };
            if is_dirty.contains(&c) || !same {
                push_item(&mut root_sets, &self.cnames[c as usize]);
                push_item(&mut root_sets, &self.record_json(root, token));
                pending.written.push(c);
            }
        }
        let mut gone_s = String::new();
        let mut is_gone: HashSet<u32> = HashSet::new();
        for &(src, _) in &self.moves {
            if self.crec[src as usize].is_some()
                && self.roots[src as usize].is_none()
                && is_gone.insert(src)
            {
                pending.gone.push(src);
                push_item(&mut gone_s, &self.cnames[src as usize]);
            }
        }
        let mut new_s = String::new();
        for &k in &self.new_keys {
            push_item(&mut new_s, &self.keys[k as usize]);
        }
        let mut adds_s = String::new();
        let mut adds = self.new_keys.clone();
        adds.sort_by(|&a, &b| {
            self.cnames[self.ncid[a as usize] as usize].cmp(&self.cnames[self.ncid[b as usize] as usize])
        });
        for &k in &adds {
            push_item(&mut adds_s, &self.cnames[self.ncid[k as usize] as usize]);
            push_item(&mut adds_s, &self.keys[k as usize]);
        }
        let mut moves_s = String::new();
        for &(src, dst) in &self.moves {
            push_item(&mut moves_s, &self.cnames[src as usize]);
            push_item(&mut moves_s, &self.cnames[dst as usize]);
        }
        self.pending = pending;
        (new_s, moves_s, node_sets, adds_s, root_sets, gone_s)
    }

    /// The commit built by `overlay_sections` applied cleanly: the graph's record of what Redis
    /// holds follows it (node states, the records it rewrote with `token`, those it deleted).
    fn overlay_committed(&mut self, token: &str) {
        let pending = std::mem::take(&mut self.pending);
        for (k, f, n) in pending.states {
            self.nstored[k as usize] = Some((f, n));
        }
        for c in pending.written {
            let r = self.roots[c as usize].as_ref().unwrap();
            let rec = Rec { token: token.to_owned(), ts: r.ts, key: r.key, uniq: r.uniq.clone(), size: r.size };
            self.crec[c as usize] = Some(rec);
        }
        for c in pending.gone {
            self.crec[c as usize] = None;
        }
    }

    fn customer_of(&self, key: &str) -> Option<String> {
        let n = self.node_of(key)?;
        let c = self.ncid[n as usize];
        (c != NONE).then(|| self.cnames[c as usize].clone())
    }

    fn members_of(&self, customer_id: &str) -> Vec<(String, i64)> {
        match self.slot_named(customer_id) {
            Some(c) if self.roots[c as usize].is_some() => self.members[c as usize]
                .iter()
                .map(|&k| (self.keys[k as usize].clone(), self.nfirst[k as usize]))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The whole graph: ([(key, customer, first_seen, linked)], [(customer, earliest_ts,
    /// earliest_key, [(code, key)], size, [member keys])]).
    #[allow(clippy::type_complexity)]
    fn export(&self) -> (Vec<(String, String, i64, i64)>, Vec<(String, i64, String, Vec<(String, String)>, i64, Vec<String>)>) {
        let nodes = (0..self.keys.len())
            .filter(|&n| self.ncid[n] != NONE)
            .map(|n| {
                (self.keys[n].clone(), self.cnames[self.ncid[n] as usize].clone(), self.nfirst[n], self.nlinked[n])
            })
            .collect();
        let roots = (0..self.cnames.len())
            .filter_map(|c| {
                let r = self.roots[c].as_ref()?;
                Some((
                    self.cnames[c].clone(),
                    r.ts,
                    self.keys[r.key as usize].clone(),
                    r.uniq
                        .iter()
                        .map(|&(code, k)| ((code as char).to_string(), self.keys[k as usize].clone()))
                        .collect(),
                    r.size,
                    self.members[c].iter().map(|&k| self.keys[k as usize].clone()).collect(),
                ))
            })
            .collect();
        (nodes, roots)
    }

    /// Tests only: keep `bits` bits of every string's hash in the core's string indexes, so
    /// that different strings share hashes and the exact lookup by bytes decides. Only before
    /// anything is indexed.
    fn _narrow_hashes(&mut self, bits: u32) -> PyResult<()> {
        if !(self.key_ix.is_empty() && self.cix.is_empty() && self.raw_ix.is_empty()) {
            return Err(pyo3::exceptions::PyValueError::new_err("narrow the hashes before anything is indexed"));
        }
        for ix in [&mut self.key_ix, &mut self.cix, &mut self.raw_ix].iter_mut() {
            ix.narrow = bits;
        }
        Ok(())
    }

    /// How many identity combinations are registered (the resolver bounds them: `clear_combos`).
    fn n_combos(&self) -> usize {
        self.combos.len()
    }

    /// Forget every registered combination (a cache: each is made again from its identities
    /// when next seen). Indices handed out before are invalid after this.
    fn clear_combos(&mut self) {
        self.combos.clear();
        self.raw_ix.clear();
        self.raw_bytes.clear();
    }

    /// Load a graph in `export`'s form into this core, which must be empty (unpickling).
    #[allow(clippy::type_complexity)]
    fn load(
        &mut self,
        nodes: Vec<(String, String, i64, i64)>,
        roots: Vec<(String, i64, String, Vec<(String, String)>, i64, Vec<String>)>,
    ) -> PyResult<()> {
        if !self.keys.is_empty() || !self.cnames.is_empty() {
            return Err(pyo3::exceptions::PyValueError::new_err("load needs an empty core"));
        }
        let bad = |what: &str| pyo3::exceptions::PyValueError::new_err(format!("load: {what}"));
        for (key, cid, first, linked) in &nodes {
            let n = self.stored_key(key).ok_or_else(|| bad("a node key is not a kind code and a hash"))?;
            let c = self.slot_of(cid);
            self.place_node(n, c, *first, *linked);
        }
        for (cid, ts, key, uniq, size, members) in roots {
            let c = self.slot_of(&cid);
            let node = |core: &Self, k: &str| core.node_of(k).ok_or_else(|| bad("a root names an unknown node"));
            let key = node(self, &key)?;
            let mut u: Vec<(u8, u32)> = Vec::with_capacity(uniq.len());
            for (code, k) in &uniq {
                u.push((*code.as_bytes().first().ok_or_else(|| bad("an empty kind code"))?, node(self, k)?));
            }
            let ms = members.iter().map(|k| node(self, k)).collect::<PyResult<Vec<u32>>>()?;
            self.roots[c as usize] = Some(Root { ts, key, uniq: u, size });
            self.members[c as usize] = ms;
        }
        Ok(())
    }

    fn __len__(&self) -> usize {
        self.n_nodes
    }
}

/// Makes instances of a plain `__slots__` class (`processors.events.ResolvedEvent`) as its
/// `__init__` would with every argument given: allocated by the type, each slot set through
/// its member descriptor (the type's own `__set__`), in C instead of a Python frame each.
struct SlotMaker<'py> {
    rtype: &'py Bound<'py, PyType>,
    descrs: Vec<Bound<'py, PyAny>>,
    // where each slot sits in an instance, when every one is a plain object member (then set
    // there as `PyMember_SetOne` sets a T_OBJECT_EX member, without a call per slot)
    offsets: Option<Vec<isize>>,
}

impl<'py> SlotMaker<'py> {
    /// Only for a class whose `__slots__` are exactly `slots` (in order), with no `__dict__`.
    fn new(rtype: &'py Bound<'py, PyType>, slots: &[&str]) -> PyResult<Self> {
        let declared: Vec<String> = rtype.getattr("__slots__")?.extract()?;
        let dict_offset: isize = rtype.getattr("__dictoffset__")?.extract()?;
        if declared != slots || dict_offset != 0 {
            return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "resolved_type must have __slots__ {slots:?} and no __dict__"
            )));
        }
        let mut descrs = Vec::with_capacity(slots.len());
        for name in slots {
            let d = rtype.getattr(*name)?;
            let has_set = unsafe { (*ffi::Py_TYPE(d.as_ptr())).tp_descr_set.is_some() };
            if !has_set {
                return Err(pyo3::exceptions::PyTypeError::new_err(format!("{name} is not a slot")));
            }
            descrs.push(d);
        }
        let offsets = descrs.iter().map(member_offset).collect();
        Ok(SlotMaker { rtype, descrs, offsets })
    }

    fn make(&self, values: &[&Bound<'py, PyAny>]) -> PyResult<Bound<'py, PyAny>> {
        let py = self.rtype.py();
        unsafe {
            let tp = self.rtype.as_type_ptr();
            let alloc = (*tp).tp_alloc.unwrap_or(ffi::PyType_GenericAlloc);
            let obj = Bound::from_owned_ptr_or_err(py, alloc(tp, 0))?;
            if let Some(offsets) = &self.offsets {
                for (&off, v) in offsets.iter().zip(values) {
                    let at = (obj.as_ptr() as *mut u8).offset(off) as *mut *mut ffi::PyObject;
                    ffi::Py_INCREF(v.as_ptr());
                    let old = std::mem::replace(&mut *at, v.as_ptr());
                    ffi::Py_XDECREF(old); // (none: a new instance)
                }
                return Ok(obj);
            }
            for (d, v) in self.descrs.iter().zip(values) {
                let set = (*ffi::Py_TYPE(d.as_ptr())).tp_descr_set.unwrap();
                if set(d.as_ptr(), obj.as_ptr(), v.as_ptr()) != 0 {
                    return Err(PyErr::fetch(py));
                }
            }
            Ok(obj)
        }
    }
}

/// The offset of a writable T_OBJECT_EX member descriptor's value in an instance, or None for
/// another kind of descriptor.
fn member_offset(d: &Bound<'_, PyAny>) -> Option<isize> {
    if d.get_type().name().ok()?.to_str().ok()? != "member_descriptor" {
        return None;
    }
    unsafe {
        let member = (*(d.as_ptr() as *mut ffi::PyMemberDescrObject)).d_member as *const ffi::PyMemberDef;
        if (*member).type_code != 16 || (*member).flags & ffi::Py_READONLY != 0 {
            return None; // T_OBJECT_EX only
        }
        Some((*member).offset as isize)
    }
}

/// Makes instances of a named tuple class (`processors.identity`'s records) as its `_make`
/// would: allocated by the type with its items (what `tuple.__new__(cls, items)` does), without
/// the Python frame of `_make` or `__new__`.
struct TupleMaker<'py> {
    ttype: &'py Bound<'py, PyType>,
    n: usize,
}

impl<'py> TupleMaker<'py> {
    /// Only for a tuple subclass whose `_fields` are exactly `fields` (in order).
    fn new(ttype: &'py Bound<'py, PyType>, fields: &[&str]) -> PyResult<Self> {
        let is_tuple = unsafe { ffi::PyType_IsSubtype(ttype.as_type_ptr(), std::ptr::addr_of_mut!(ffi::PyTuple_Type)) != 0 };
        let declared: Vec<String> = match ttype.getattr("_fields") {
            Ok(f) if is_tuple => f.extract().unwrap_or_default(),
            _ => Vec::new(),
        };
        if declared != fields {
            return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "a record type must be a named tuple with the fields {fields:?}"
            )));
        }
        Ok(TupleMaker { ttype, n: fields.len() })
    }

    fn make(&self, items: Vec<PyObject>) -> PyResult<PyObject> {
        let py = self.ttype.py();
        if items.len() != self.n {
            return Err(pyo3::exceptions::PyValueError::new_err("a record with the wrong length"));
        }
        unsafe {
            let tp = self.ttype.as_type_ptr();
            let alloc = (*tp).tp_alloc.unwrap_or(ffi::PyType_GenericAlloc);
            let obj = alloc(tp, self.n as ffi::Py_ssize_t);
            if obj.is_null() {
                return Err(PyErr::fetch(py));
            }
            for (i, item) in items.into_iter().enumerate() {
                ffi::PyTuple_SET_ITEM(obj, i as ffi::Py_ssize_t, item.into_ptr());
            }
            Ok(PyObject::from_owned_ptr(py, obj))
        }
    }
}

/// The kind's name (`kind_of`) as an interned str.
fn kind_py(py: Python<'_>, code: u8) -> &Bound<'_, PyString> {
    match code {
        b'a' => intern!(py, "anonymous_id"),
        b'd' => intern!(py, "device_id"),
        b'u' => intern!(py, "user_id"),
        b'e' => intern!(py, "email"),
        _ => intern!(py, "crm_id"),
    }
}

/// An object's instance dict (a pydantic model's fields, in field order), or None.
fn dict_of<'py>(ob: &Bound<'py, PyAny>) -> Option<Bound<'py, PyDict>> {
    unsafe {
        let d = ffi::PyObject_GenericGetDict(ob.as_ptr(), std::ptr::null_mut());
        if d.is_null() {
            ffi::PyErr_Clear();
            return None;
        }
        Bound::from_owned_ptr(ob.py(), d).downcast_into::<PyDict>().ok()
    }
}

/// Days from 1970-01-01 to a civil date (H. Hinnant's days_from_civil, as processors.events).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `datetime.timezone` and pydantic-core's `TzInfo`: the fixed-offset kinds.
static FIXED_TZ: pyo3::sync::GILOnceCell<(Py<PyType>, Py<PyType>)> = pyo3::sync::GILOnceCell::new();

const EXACT_US: i64 = 1 << 53; // |epoch microseconds| below this are exact as a float

/// `int(at.timestamp() * 1000)` of an aware `datetime` with a fixed-offset tzinfo, by the
/// reference's own float arithmetic (`us / 1e6 * 1000`, truncated); None for anything else.
/// `last` caches the previous tzinfo's offset (the objects outlive the call: the events hold
/// them).
fn fixed_epoch_ms<'py>(
    at: &Bound<'py, PyAny>,
    kinds: &(Py<PyType>, Py<PyType>),
    last: &mut Option<(Bound<'py, PyAny>, i64)>,
) -> Option<i64> {
    let dt = at.downcast_exact::<PyDateTime>().ok()?;
    let tz = dt.get_tzinfo_bound()?.into_any();
    let offset_us = match last {
        Some((t, off)) if t.is(&tz) => *off,
        _ => {
            let t = tz.get_type();
            if !(t.is(kinds.0.bind(at.py())) || t.is(kinds.1.bind(at.py()))) {
                return None;
            }
            let delta = tz.call_method1(intern!(at.py(), "utcoffset"), (at.py().None(),)).ok()?;
            let delta = delta.downcast::<PyDelta>().ok()?;
            let off = (delta.get_days() as i64 * 86_400 + delta.get_seconds() as i64) * 1_000_000
                + delta.get_microseconds() as i64;
            *last = Some((tz, off));
            off
        }
    };
    let days = days_from_civil(dt.get_year() as i64, dt.get_month() as i64, dt.get_day() as i64);
    let secs = days * 86_400
        + dt.get_hour() as i64 * 3_600
        + dt.get_minute() as i64 * 60
        + dt.get_second() as i64;
    let us = secs * 1_000_000 + dt.get_microsecond() as i64 - offset_us;
    if us.abs() >= EXACT_US {
        return None;
    }
    Some((us as f64 / 1e6 * 1000.0) as i64)
}

/// `datetime.timezone` and pydantic-core's `TzInfo` (`FIXED_TZ`).
fn fixed_tz_kinds(py: Python<'_>) -> PyResult<&(Py<PyType>, Py<PyType>)> {
    FIXED_TZ.get_or_try_init(py, || -> PyResult<_> {
        let timezone = py.import_bound("datetime")?.getattr("timezone")?.downcast_into::<PyType>()?;
        let tzinfo = py.import_bound("pydantic_core")?.getattr("TzInfo")?.downcast_into::<PyType>()?;
        Ok((timezone.unbind(), tzinfo.unbind()))
    })
}

/// Event `ev`'s `ts_ms` (`d`: its `__dict__`): the value the dict caches, else computed
/// (`fixed_epoch_ms`, or the event's own `ts_ms` attribute for other datetimes) and cached
/// there, as the attribute caches it. Returns it and its int object.
fn event_time<'py>(
    ev: &Bound<'py, PyAny>,
    d: Option<&Bound<'py, PyDict>>,
    kinds: &(Py<PyType>, Py<PyType>),
    last: &mut Option<(Bound<'py, PyAny>, i64)>,
) -> PyResult<(i64, Bound<'py, PyAny>)> {
    let py = ev.py();
    let (at_name, ts_name) = (intern!(py, "occurred_at"), intern!(py, "ts_ms"));
    if let Some(d) = d {
        if let Some(ts) = d.get_item(ts_name)? {
            return Ok((ts.extract()?, ts));
        }
        let at = match d.get_item(at_name)? {
            Some(at) => at,
            None => ev.getattr(at_name)?,
        };
        if let Some(ms) = fixed_epoch_ms(&at, kinds, last) {
            let ts = ms.into_py(py).into_bound(py);
            d.set_item(ts_name, &ts)?;
            return Ok((ms, ts));
        }
    }
    let ts = ev.getattr(ts_name)?;
    Ok((ts.extract()?, ts))
}

/// Each event's `ts_ms` (`processors.events.event_times_ms`), cached in each event as the
/// attribute caches it (`event_time`). Returns the list of them.
#[pyfunction]
fn event_times_ms<'py>(py: Python<'py>, events: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
    let kinds = fixed_tz_kinds(py)?;
    let out = PyList::empty_bound(py);
    let mut last: Option<(Bound<'py, PyAny>, i64)> = None;
    for ev in events.iter()? {
        let ev = ev?;
        let d = dict_of(&ev);
        out.append(event_time(&ev, d.as_ref(), kinds, &mut last)?.1)?;
    }
    Ok(out)
}

#[pymodule]
fn journeymap_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativeIdentityCore>()?;
    m.add_function(wrap_pyfunction!(event_times_ms, m)?)?;
    // The hash of the sources it was built from (scripts/build-native.sh sets it; "" otherwise)
    m.add("SOURCE_HASH", option_env!("JOURNEYMAP_NATIVE_SOURCE_HASH").unwrap_or(""))?;
    Ok(())
}
