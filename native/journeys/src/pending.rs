//! The chain's funnel reorder buffer (`JourneyChain._pending`, `processors/chain.py`) as compact
//! native records, and the release that feeds the funnels and the attribution paths from them
//! (issue 4).
//!
//! An event's record is taken when it enters the buffer, right after the journeys core applied
//! it: time, arrival seq, customer id, segment and the touchpoint and channel as one shared Python
//! string per distinct value. (The events are read there once instead of twice at release, by
//! the paths and by the funnels.) The native journeys core hands over each applied event's
//! record itself as it reads the event (`NativeJourneyCore.apply` given the buffer, through
//! `push_read`), with the event-id digest it has made; `extend` reads events for the other
//! callers (a Python journeys processor), asking for a chunk's lines ahead of reading them, since
//! in a batch of 20k events they are partly out of the cache again by then. The release sorts
//! the records by `(ts_ms, seq)`, takes those before the frontier, puts each run of equal times
//! in event-id digest order (then seq), renames merged-away customers to their winners (the
//! chain's `_winner`, called in the same order as the Python release calls it), and hands the
//! records (a `NativeReleased`) to `NativePaths.add` and `NativeFunnelStep.update`: neither
//! reads the released events again, which by then are cold. The events themselves go only to
//! `out.released`.
//!
//! The order of the records is the order of the Python list `_pending` they stand for (sorted
//! by each release, appended in arrival order, `heapq.heappush` for a single push), so `entries`
//! gives back that list and the buffer pickles as it.

use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PySet, PyString, PyTuple};
use std::ptr::NonNull;

use crate::paths::{EventSlots, CUSTOMER_ID, EVENT, SEGMENT, TS_MS};
use crate::{dict_or_attr, digest_of, instance_dict, FxMap, Interner, PStr};

/// A strong reference to any Python object, touched only under the GIL (as `PStr`).
pub(crate) struct Own(NonNull<ffi::PyObject>);

// SAFETY: only touched under the GIL (held by every method of the pyclasses holding it).
unsafe impl Send for Own {}

impl Own {
    fn of(b: &Bound<'_, PyAny>) -> Own {
        Own(NonNull::new(b.clone().into_ptr()).unwrap())
    }

    pub(crate) fn bound<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        unsafe { Bound::from_borrowed_ptr(py, self.0.as_ptr()) }
    }
}

impl Drop for Own {
    fn drop(&mut self) {
        unsafe { ffi::Py_DECREF(self.0.as_ptr()) };
    }
}

/// Ask for the cache line at `p` ahead of its use. A hint only: nothing on other targets.
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::x86_64::_mm_prefetch(p as *const i8, std::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// How many events `extend` asks the memory for at once.
const CHUNK: usize = 32;

/// One waiting event: what the funnels and the paths read of it, and the event itself.
pub(crate) struct Rec {
    pub(crate) ts: i64,
    pub(crate) seq: i64,
    pub(crate) cid: PStr,
    pub(crate) tp: PStr, // the buffer's one string for this touchpoint
    pub(crate) ch: PStr, // (likewise, the channel)
    pub(crate) seg: Own,
    pub(crate) ev: Own,        // the ResolvedEvent
    pub(crate) dig: Option<u64>, // its event-id digest, when the journeys core gave it
}

impl Rec {
    fn key(&self) -> (i64, i64) {
        (self.ts, self.seq)
    }

    /// The `(ts_ms, seq, event)` entry of the Python list the buffer stands for.
    fn entry<'py>(&self, py: Python<'py>) -> Bound<'py, PyTuple> {
        PyTuple::new_bound(py, [self.ts.into_py(py), self.seq.into_py(py), self.ev.bound(py).unbind()])
    }
}

/// The records released by one call, in release order, for `NativePaths.add` and `NativeFunnelStep.update`.
#[pyclass(module = "journeymap_journeys")]
pub struct NativeReleased {
    pub(crate) recs: Vec<Rec>,
}

#[pymethods]
impl NativeReleased {
    fn __len__(&self) -> usize {
        self.recs.len()
    }
}

/// The reorder buffer (see the module doc).
#[pyclass(module = "journeymap_journeys")]
pub struct NativePending {
    slots: EventSlots,
    strs: Interner,
    recs: Vec<Rec>,
    // How many events wait per customer id: built by the first merge that asks (a replay never
    // does), then kept with every record in and out, so that a merge whose customers have no
    // waiting events costs nothing and the customers asked for are found without a pass.
    waiting: Option<FxMap<String, u32>>,
}

impl NativePending {
    fn canonical(&mut self, py: Python<'_>, s: &Bound<'_, PyString>) -> PyResult<PStr> {
        let c = self.strs.code(py, s)?;
        Ok(self.strs.py[c as usize].clone())
    }

    /// The record of `ev` (a `ResolvedEvent`) at time `ts` and arrival `seq`.
    fn record(&mut self, py: Python<'_>, ev: &Bound<'_, PyAny>, ts: Option<i64>, seq: i64) -> PyResult<Rec> {
        self.slots.learn(ev);
        let ts = match ts {
            Some(ts) => ts,
            None => self.slots.get(ev, TS_MS)?.extract()?,
        };
        let cid = self.slots.get(ev, CUSTOMER_ID)?.downcast_into::<PyString>()?;
        let te = self.slots.get(ev, EVENT)?;
        let td = instance_dict(&te);
        let tp = self.canonical(py, dict_or_attr(&te, td, intern!(py, "touchpoint"))?.downcast()?)?;
        let ch = self.canonical(py, dict_or_attr(&te, td, intern!(py, "channel"))?.downcast()?)?;
        let seg = self.slots.get(ev, SEGMENT)?;
        Ok(Rec { ts, seq, cid: PStr::take(cid), tp, ch, seg: Own::of(&seg), ev: Own::of(ev), dig: None })
    }

    /// Append the record of `ev` from its fields as the journeys core has just read them
    /// (`NativeJourneyCore.apply` given this buffer): the event is not read again.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn push_read(
        &mut self,
        py: Python<'_>,
        ev: &Bound<'_, PyAny>,
        ts: i64,
        seq: i64,
        cid: &Bound<'_, PyString>,
        tp: &Bound<'_, PyString>,
        ch: &Bound<'_, PyString>,
        seg: &Bound<'_, PyAny>,
        dig: u64,
    ) -> PyResult<()> {
        let tp = self.canonical(py, tp)?;
        let ch = self.canonical(py, ch)?;
        if self.waiting.is_some() {
            Self::counted_in(&mut self.waiting, cid.to_str()?);
        }
        self.recs.push(Rec {
            ts,
            seq,
            cid: PStr::of(cid),
            tp,
            ch,
            seg: Own::of(seg),
            ev: Own::of(ev),
            dig: Some(dig),
        });
        Ok(())
    }

    /// Ask for what `record` reads of `chunk`'s events, one level of pointers at a time (the
    /// loads of a level are independent, so their misses overlap): each event's customer id and
    /// TouchpointEvent, the event's field dict, then the dict's table. (A batch of events is
    /// partly out of the cache again by the time the journeys core has applied all of it.)
    fn warm(&mut self, chunk: &[Bound<'_, PyAny>]) {
        let mut tes = [std::ptr::null_mut(); CHUNK];
        for (k, ev) in chunk.iter().enumerate() {
            self.slots.learn(ev);
            prefetch(self.slots.peek(ev, CUSTOMER_ID));
            tes[k] = self.slots.peek(ev, EVENT);
            prefetch(tes[k]);
        }
        let mut dicts = [std::ptr::null_mut(); CHUNK];
        for (k, &te) in tes[..chunk.len()].iter().enumerate() {
            if !te.is_null() {
                let dp = unsafe { ffi::_PyObject_GetDictPtr(te) };
                if !dp.is_null() {
                    dicts[k] = unsafe { *dp };
                    prefetch(dicts[k]);
                }
            }
        }
        for &d in &dicts[..chunk.len()] {
            if !d.is_null() && unsafe { ffi::PyDict_CheckExact(d) } != 0 {
                let keys = unsafe { (*(d as *mut ffi::PyDictObject)).ma_keys } as *const u8;
                for line in 0..6 {
                    prefetch(unsafe { keys.add(64 * line) });
                }
            }
        }
    }

    /// Count one more waiting event of `cid` (when the index is kept).
    fn counted_in(waiting: &mut Option<FxMap<String, u32>>, cid: &str) {
        if let Some(ix) = waiting {
            match ix.get_mut(cid) {
                Some(n) => *n += 1,
                None => {
                    ix.insert(cid.to_owned(), 1);
                }
            }
        }
    }

    /// Count one waiting event of `cid` less (when the index is kept).
    fn counted_out(waiting: &mut Option<FxMap<String, u32>>, cid: &str) {
        if let Some(ix) = waiting {
            if let Some(n) = ix.get_mut(cid) {
                *n -= 1;
                if *n == 0 {
                    ix.remove(cid);
                }
            }
        }
    }

    /// The index of waiting events per customer, built from the records the first time.
    fn index(&mut self) -> &FxMap<String, u32> {
        if self.waiting.is_none() {
            let mut ix = Some(FxMap::default());
            for r in &self.recs {
                Self::counted_in(&mut ix, r.cid.text());
            }
            self.waiting = ix;
        }
        self.waiting.as_ref().unwrap()
    }

    fn push_rec(&mut self, rec: Rec) {
        Self::counted_in(&mut self.waiting, rec.cid.text());
        self.recs.push(rec);
    }

    /// `heapq.heappush`'s sift of the last record towards the root.
    fn sift_last(&mut self) {
        let last = self.recs.len() - 1;
        self.sift_down(0, last);
    }

    /// `heapq._siftdown(heap, start, pos)`: the record at `pos` towards `start` while smaller
    /// than its parent. (Moving it by swaps leaves every record where heapq's hole would.)
    fn sift_down(&mut self, start: usize, mut pos: usize) {
        while pos > start {
            let parent = (pos - 1) >> 1;
            if self.recs[pos].key() < self.recs[parent].key() {
                self.recs.swap(pos, parent);
                pos = parent;
                continue;
            }
            break;
        }
    }

    /// `heapq.heapify`, record for record: the same arrangement as the Python list would get,
    /// so the buffer keeps standing for the list the Python engine would hold.
    fn heapify(&mut self) {
        let end = self.recs.len();
        for start in (0..end / 2).rev() {
            // heapq._siftup: down to a leaf along the smaller children, then back up
            let mut pos = start;
            let mut child = 2 * pos + 1;
            while child < end {
                let right = child + 1;
                if right < end && self.recs[child].key() >= self.recs[right].key() {
                    child = right;
                }
                self.recs.swap(pos, child);
                pos = child;
                child = 2 * pos + 1;
            }
            self.sift_down(start, pos);
        }
    }
}

/// `recs` in `(ts, seq)` order, as a stable sort leaves them: the `(ts, seq, index)` triples
/// are sorted (the index breaks ties as a stable sort would; seqs are unique anyway), then each
/// record (~80 bytes, in the heap's arrangement, far from sorted) is moved once, instead of
/// through every pass of a sort of the records (~1.8 % of the chain's instructions).
fn sort_recs(recs: &mut Vec<Rec>) {
    if recs.windows(2).all(|w| w[0].key() <= w[1].key()) {
        return;
    }
    let mut keys: Vec<(i64, i64, u32)> =
        recs.iter().enumerate().map(|(i, r)| (r.ts, r.seq, i as u32)).collect();
    keys.sort_unstable();
    let mut old: Vec<Option<Rec>> = std::mem::take(recs).into_iter().map(Some).collect();
    *recs = keys.iter().map(|k| old[k.2 as usize].take().expect("each record once")).collect();
}

#[pymethods]
impl NativePending {
    #[new]
    fn new() -> Self {
        NativePending {
            slots: EventSlots::new(),
            strs: Interner {
                ix: FxMap::default(),
                py: Vec::new(),
                by_ptr: (0..64).map(|_| (0usize, 0u32, None)).collect(),
            },
            recs: Vec::new(),
            waiting: None,
        }
    }

    /// Append `events` in arrival order with seqs `seq + 1`, `seq + 2`, ... (`_pending.extend`).
    fn extend(&mut self, py: Python<'_>, events: &Bound<'_, PyAny>, seq: i64) -> PyResult<()> {
        let mut next = seq;
        if let Ok(list) = events.downcast::<PyList>() {
            let events: Vec<Bound<'_, PyAny>> = list.iter().collect();
            for chunk in events.chunks(CHUNK) {
                self.warm(chunk);
                for ev in chunk {
                    next += 1;
                    let rec = self.record(py, ev, None, next)?;
                    self.push_rec(rec);
                }
            }
            return Ok(());
        }
        for ev in events.iter()? {
            next += 1;
            let rec = self.record(py, &ev?, None, next)?;
            self.push_rec(rec);
        }
        Ok(())
    }

    /// `heapq.heappush(_pending, (ts_ms, seq, event))`.
    fn push(&mut self, py: Python<'_>, ts_ms: i64, seq: i64, event: &Bound<'_, PyAny>) -> PyResult<()> {
        let rec = self.record(py, event, Some(ts_ms), seq)?;
        self.push_rec(rec);
        self.sift_last();
        Ok(())
    }

    /// The list `_pending` stands for: `(ts_ms, seq, event)` in the buffer's order.
    fn entries<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty_bound(py);
        for r in &self.recs {
            out.append(r.entry(py))?;
        }
        Ok(out)
    }

    /// Hold `entries` (`(ts_ms, seq, event)`, in that order) instead of what is held.
    fn replace(&mut self, py: Python<'_>, entries: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut recs = Vec::new();
        for entry in entries.iter()? {
            let (ts, seq, ev): (i64, i64, Bound<'_, PyAny>) = entry?.extract()?;
            recs.push(self.record(py, &ev, Some(ts), seq)?);
        }
        self.recs = recs;
        if self.waiting.is_some() {
            self.waiting = None; // (built again from these records when next asked)
            self.index();
        }
        Ok(())
    }

    fn __len__(&self) -> usize {
        self.recs.len()
    }

    /// The distinct customer ids of the waiting events that are in `among` (anything with
    /// `__contains__`: the chain's renames, a set), without making the entries.
    fn customers_in<'py>(&mut self, py: Python<'py>, among: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PySet>> {
        let out = PySet::empty_bound(py)?;
        let asked = among.len().ok();
        if asked == Some(0) {
            return Ok(out);
        }
        let ix = self.index();
        match asked {
            // the smaller side is walked: the ids asked (a merge's few) or the waiting customers
            Some(n) if n < ix.len() => {
                for id in among.iter()? {
                    let id = id?;
                    if let Ok(text) = id.downcast::<PyString>() {
                        if ix.contains_key(text.to_str()?) {
                            out.add(&id)?;
                        }
                    }
                }
            }
            _ => {
                for cid in ix.keys() {
                    let cid = PyString::new_bound(py, cid);
                    if among.contains(&cid)? {
                        out.add(cid)?;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Take out the waiting events of the customers in `ids` (strings): their entries `(ts_ms, seq,
    /// event)` in the buffer's order. What stays is made a heap again as `heapq.heapify` makes
    /// the list of the entries left (the chain's detach, as the Python engine does it).
    fn take<'py>(&mut self, py: Python<'py>, ids: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty_bound(py);
        let mut wanted: FxMap<String, ()> = FxMap::default();
        for id in ids.iter()? {
            wanted.insert(id?.downcast::<PyString>()?.to_str()?.to_owned(), ());
        }
        let ix = self.index();
        if !wanted.keys().any(|id| ix.contains_key(id.as_str())) {
            return Ok(out); // none of them has an event waiting: no pass over the records
        }
        let mine: Vec<bool> = self.recs.iter().map(|r| wanted.contains_key(r.cid.text())).collect();
        let recs = std::mem::take(&mut self.recs);
        let mut rest = Vec::with_capacity(recs.len());
        for (r, m) in recs.into_iter().zip(mine) {
            if m {
                Self::counted_out(&mut self.waiting, r.cid.text());
                out.append(r.entry(py))?;
            } else {
                rest.push(r);
            }
        }
        self.recs = rest;
        self.heapify();
        Ok(out)
    }

    /// The event ids of `customer_id`'s waiting events.
    fn event_ids_of<'py>(&mut self, py: Python<'py>, customer_id: &Bound<'py, PyString>) -> PyResult<Bound<'py, PySet>> {
        let out = PySet::empty_bound(py)?;
        let want = customer_id.to_str()?;
        if !self.index().contains_key(want) {
            return Ok(out);
        }
        for r in &self.recs {
            if r.cid.ptr() == customer_id.as_ptr() || r.cid.text() == want {
                let te = self.slots.get(&r.ev.bound(py), EVENT)?;
                out.add(te.getattr(intern!(py, "event_id"))?)?;
            }
        }
        Ok(out)
    }

    /// Pickled as the list it stands for (the chain adopts it again on unpickling).
    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyAny>, (Bound<'py, PyList>,))> {
        let list = py.import_bound("builtins")?.getattr("list")?;
        Ok((list, (self.entries(py)?,)))
    }

    /// Take every record before `frontier_ms` (all when None) in release order: `(ts_ms, seq)`,
    /// runs of equal times in event-id digest order, then seq. A customer in `renamed` is
    /// renamed to `winner(customer)` (a new event, as `ResolvedEvent(winner, event, segment)`).
    /// Returns the released events and their records, or None when nothing is released.
    #[pyo3(signature = (frontier_ms, renamed, winner))]
    fn release<'py>(
        &mut self,
        py: Python<'py>,
        frontier_ms: Option<i64>,
        renamed: &Bound<'py, PyDict>,
        winner: &Bound<'py, PyAny>,
    ) -> PyResult<Option<(Bound<'py, PyList>, Py<NativeReleased>)>> {
        sort_recs(&mut self.recs);
        let k = match frontier_ms {
            None => self.recs.len(),
            Some(f) => self.recs.partition_point(|r| r.ts < f),
        };
        if k == 0 {
            return Ok(None);
        }
        let mut taken: Vec<Rec> = self.recs.drain(..k).collect();
        if self.waiting.is_some() {
            for r in &taken {
                Self::counted_out(&mut self.waiting, r.cid.text());
            }
        }
        let mut i = 0;
        while i < k {
            let mut j = i + 1;
            while j < k && taken[j].ts == taken[i].ts {
                j += 1;
            }
            if j - i > 1 {
                // seqs are unique: the digest of each, then the run sorted by (digest, seq)
                let mut digest: FxMap<i64, u64> = FxMap::default();
                for r in &taken[i..j] {
                    let d = match r.dig {
                        Some(d) => d,
                        None => {
                            let te = self.slots.get(&r.ev.bound(py), EVENT)?;
                            let id = te.getattr(intern!(py, "event_id"))?;
                            digest_of(id.downcast::<PyString>()?.to_str()?)
                        }
                    };
                    digest.insert(r.seq, d);
                }
                taken[i..j].sort_by_key(|r| (digest[&r.seq], r.seq));
            }
            i = j;
        }
        if !renamed.is_empty() {
            for r in taken.iter_mut() {
                if !renamed.contains(r.cid.bound(py))? {
                    continue;
                }
                let w = winner.call1((r.cid.bound(py),))?.downcast_into::<PyString>()?;
                let ev = r.ev.bound(py);
                let te = self.slots.get(&ev, EVENT)?;
                let renamed_ev = ev.get_type().call1((&w, te, r.seg.bound(py)))?;
                r.cid = PStr::take(w);
                r.ev = Own::of(&renamed_ev);
            }
        }
        let released = PyList::empty_bound(py);
        for r in &taken {
            released.append(r.ev.bound(py))?;
        }
        Ok(Some((released, Py::new(py, NativeReleased { recs: taken })?)))
    }
}
