//! `PathAccumulator` (`processors/attribution.py`): the open journeys of every customer in
//! native memory and the per-event loop (`add`) over them (issue 4).
//!
//! Per open customer: the last event time and the touchpoints and channels so far, as interned
//! codes, in a map that keeps the insertion order of the Python dict `open` it stands for (a
//! customer set again keeps its place; one removed and set again goes last), because the order
//! of `open` is the order in which `PathAccumulator.paths` adds idle journeys. The finished
//! paths (`done[level]`: steps tuple -> `[conversions, value, nulls]`) stay the accumulator's
//! Python dicts, changed here by the same operations in the same order as the Python loop (the
//! defaultdict's own factory for a new path, the same Python additions on the outcome slots).
//! The wrapper (`processors/attribution_native.py`) shows the open journeys as a mapping of the
//! Python tuples `(last ts, [touchpoints], [channels])` and pickles them as that dict.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyFrozenSet, PyList, PyString, PyTuple};

use crate::ordered::{Keyed, Ordered};
use crate::pending::NativeReleased;
use crate::{dict_or_attr, instance_dict, slot_offset, slot_or_attr, EvLayout, FxMap, Interner, PStr};

pub(crate) const CUSTOMER_ID: usize = 0;
pub(crate) const EVENT: usize = 1;
pub(crate) const SEGMENT: usize = 2;
pub(crate) const TS_MS: usize = 3;

/// Reads `ResolvedEvent`'s slots (`customer_id`, `event`, `segment`, `ts_ms`): at their offsets
/// in the type of the first event seen, by getattr for any other type.
pub(crate) struct EventSlots {
    layout: Option<EvLayout>,
    ty: Option<Py<PyAny>>,
}

impl EventSlots {
    pub(crate) fn new() -> EventSlots {
        EventSlots { layout: None, ty: None }
    }

    /// Learn the layout from the first event (call before `get` on each event).
    pub(crate) fn learn(&mut self, ev: &Bound<'_, PyAny>) {
        if self.ty.is_some() {
            return;
        }
        let ty = ev.get_type().into_any();
        let offs = slot_names(ev.py()).map(|n| slot_offset(&ty, n));
        if offs.iter().all(|o| o.is_some()) {
            self.layout = Some(EvLayout {
                ty: ty.as_ptr() as *mut pyo3::ffi::PyTypeObject,
                off: offs.map(|o| o.unwrap()),
            });
        }
        self.ty = Some(ty.unbind());
    }

    /// Slot `i` (`CUSTOMER_ID`, `EVENT`, `SEGMENT`, `TS_MS`) of `ev`.
    pub(crate) fn get<'py>(&self, ev: &Bound<'py, PyAny>, i: usize) -> PyResult<Bound<'py, PyAny>> {
        slot_or_attr(ev, &self.layout, i, slot_names(ev.py())[i])
    }

    /// Slot `i` of `ev` as a borrowed pointer, read at its offset without touching the value
    /// (null when the layout does not apply or the slot is empty): for prefetching.
    pub(crate) fn peek(&self, ev: &Bound<'_, PyAny>, i: usize) -> *mut pyo3::ffi::PyObject {
        match &self.layout {
            Some(l) if unsafe { pyo3::ffi::Py_TYPE(ev.as_ptr()) } == l.ty => unsafe {
                *((ev.as_ptr() as *mut u8).offset(l.off[i]) as *mut *mut pyo3::ffi::PyObject)
            },
            _ => std::ptr::null_mut(),
        }
    }
}

fn slot_names(py: Python<'_>) -> [&Bound<'_, PyString>; 4] {
    [intern!(py, "customer_id"), intern!(py, "event"), intern!(py, "segment"), intern!(py, "ts_ms")]
}

/// One open journey: the customer, the last event time, the steps so far (interned codes).
struct Open {
    cid: PStr,
    last_ts: i64,
    tps: Vec<u32>,
    chs: Vec<u32>,
}

impl Keyed for Open {
    fn cid(&self) -> &PStr {
        &self.cid
    }
}

const STEP: u8 = 0;
const CONVERSION: u8 = 1;
const CHURN: u8 = 2;

/// The open journeys of a `PathAccumulator` and its `add` loop (see the module doc).
#[pyclass(module = "journeymap_journeys")]
pub struct NativePaths {
    slots: EventSlots,
    strs: Interner,
    kind: Vec<u8>, // per code: STEP, CONVERSION or CHURN (as a touchpoint)
    conversion: Py<PyFrozenSet>,
    churn: Py<PyFrozenSet>,
    horizon_ms: i64,
    open: Ordered<Open>,
}

impl NativePaths {
    fn code(&mut self, py: Python<'_>, s: &Bound<'_, PyString>) -> PyResult<u32> {
        let c = self.strs.code(py, s)?;
        while self.kind.len() < self.strs.py.len() {
            let text = self.strs.py[self.kind.len()].bound(py);
            let k = if self.conversion.bind(py).contains(&text)? {
                CONVERSION
            } else if self.churn.bind(py).contains(&text)? {
                CHURN
            } else {
                STEP
            };
            self.kind.push(k);
        }
        Ok(c)
    }

    fn steps<'py>(&self, py: Python<'py>, codes: &[u32]) -> Bound<'py, PyList> {
        PyList::new_bound(py, codes.iter().map(|&c| self.strs.py[c as usize].bound(py)))
    }

    /// `_close`: count one finished path at both levels (nothing for an empty path).
    fn close(
        &self,
        py: Python<'_>,
        done: [&Bound<'_, PyDict>; 2],
        tps: &[u32],
        chs: &[u32],
        slot: usize,
        value: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        if tps.is_empty() {
            return Ok(());
        }
        for (d, codes) in done.iter().zip([tps, chs].iter()) {
            let key = PyTuple::new_bound(py, codes.iter().map(|&c| self.strs.py[c as usize].bound(py)));
            let acc = match d.get_item(&key)? {
                Some(a) => a,
                // `done[level][key]` on a missing key: the defaultdict's own factory makes it
                None => d.as_any().get_item(&key)?,
            };
            let acc = acc.downcast_into::<PyList>()?;
            let n = acc.get_item(slot)?.add(1)?;
            acc.set_item(slot, n)?;
            if let Some(v) = value {
                let total = acc.get_item(1)?.add(v)?;
                acc.set_item(1, total)?;
            }
        }
        Ok(())
    }

    /// Set `cid`'s journey: in its place when open, else last.
    fn put(&mut self, cid: &Bound<'_, PyString>, last_ts: i64, tps: Vec<u32>, chs: Vec<u32>) -> PyResult<()> {
        let text = cid.to_str()?;
        match self.open.find(text) {
            Some(i) => {
                let e = self.open.at_mut(i);
                e.last_ts = last_ts;
                e.tps = tps;
                e.chs = chs;
            }
            None => self.open.put(text, Open { cid: PStr::of(cid), last_ts, tps, chs }),
        }
        Ok(())
    }

    fn remove(&mut self, cid: &str) -> Option<Open> {
        self.open.remove(cid)
    }

    fn journey<'py>(&self, py: Python<'py>, e: &Open) -> Bound<'py, PyTuple> {
        PyTuple::new_bound(
            py,
            [e.last_ts.into_py(py).into_bound(py), self.steps(py, &e.tps).into_any(), self.steps(py, &e.chs).into_any()],
        )
    }
}

#[pymethods]
impl NativePaths {
    #[new]
    fn new(conversion: Py<PyFrozenSet>, churn: Py<PyFrozenSet>, horizon_ms: i64) -> Self {
        NativePaths {
            slots: EventSlots::new(),
            strs: Interner {
                ix: FxMap::default(),
                py: Vec::new(),
                by_ptr: (0..64).map(|_| (0usize, 0u32, None)).collect(),
            },
            kind: Vec::new(),
            conversion,
            churn,
            horizon_ms,
            open: Ordered::new(),
        }
    }

    /// `PathAccumulator.add`: `events` in event-time order per customer; finished paths are
    /// counted in `done_tp` and `done_ch` (`done["touchpoint"]`, `done["channel"]`). `events`
    /// are `ResolvedEvent`s, or a `NativeReleased` batch of the chain's reorder buffer (its
    /// records are read instead: only a conversion's revenue is read from its event).
    fn add(
        &mut self,
        py: Python<'_>,
        events: &Bound<'_, PyAny>,
        done_tp: &Bound<'_, PyDict>,
        done_ch: &Bound<'_, PyDict>,
    ) -> PyResult<()> {
        let n_touchpoint = intern!(py, "touchpoint");
        let done = [done_tp, done_ch];
        let zero = PyFloat::new_bound(py, 0.0).into_any();
        if let Ok(batch) = events.downcast::<NativeReleased>() {
            for r in &batch.borrow().recs {
                let ev = r.ev.bound(py);
                self.slots.learn(&ev);
                let src = Src::Record(&ev, r.ch.bound(py));
                self.add_one(py, done, &zero, &r.cid.bound(py), r.ts, &r.tp.bound(py), src)?;
            }
            return Ok(());
        }
        // First what each event says (a short loop whose reads of the events, cold by the time
        // they are released, overlap), then the journeys.
        let mut read = Vec::new();
        for ev in events.iter()? {
            let ev = ev?;
            self.slots.learn(&ev);
            let cid = self.slots.get(&ev, CUSTOMER_ID)?.downcast_into::<PyString>()?;
            let te = self.slots.get(&ev, EVENT)?;
            let ts: i64 = self.slots.get(&ev, TS_MS)?.extract()?;
            let td = instance_dict(&te);
            let tp = dict_or_attr(&te, td, n_touchpoint)?.downcast_into::<PyString>()?;
            read.push((cid, ts, te, tp));
        }
        for (cid, ts, te, tp) in read {
            self.add_one(py, done, &zero, &cid, ts, &tp, Src::Event(&te))?;
        }
        Ok(())
    }

    /// `open[cid]` as the Python tuple `(last ts, [touchpoints], [channels])`, or None.
    fn get<'py>(&self, py: Python<'py>, cid: &str) -> Option<Bound<'py, PyTuple>> {
        let i = self.open.find(cid)?;
        Some(self.journey(py, self.open.at(i)))
    }

    /// `open[cid] = journey` (a tuple `(last ts, [touchpoints], [channels])`).
    fn set(&mut self, py: Python<'_>, cid: &Bound<'_, PyString>, journey: &Bound<'_, PyAny>) -> PyResult<()> {
        let (last_ts, tps, chs): (i64, Bound<'_, PyAny>, Bound<'_, PyAny>) = journey.extract()?;
        let mut codes = [Vec::new(), Vec::new()];
        for (out, steps) in codes.iter_mut().zip([tps, chs].iter()) {
            for s in steps.iter()? {
                out.push(self.code(py, s?.downcast()?)?);
            }
        }
        let [t, c] = codes;
        self.put(cid, last_ts, t, c)
    }

    /// `open.pop(cid)`: the journey, or None when `cid` has none open.
    fn pop<'py>(&mut self, py: Python<'py>, cid: &str) -> Option<Bound<'py, PyTuple>> {
        let e = self.remove(cid)?;
        Some(self.journey(py, &e))
    }

    /// `PathAccumulator.rename`: `loser`'s open journey (if any) becomes `winner`'s when the
    /// winner has none or an older one (the later last event wins); set as `open[winner] = lost`
    /// sets it (in the winner's place, or last). No journey is read out or set back as Python
    /// objects. A `loser` that is not a str has no journey; a `winner` that is not one is a
    /// TypeError once the loser's journey is out (as the dict's wrapper raises it then).
    fn rename(&mut self, loser: &Bound<'_, PyAny>, winner: &Bound<'_, PyAny>) -> PyResult<()> {
        let lost = match loser.downcast::<PyString>() {
            Ok(l) => match self.remove(l.to_str()?) {
                Some(e) => e,
                None => return Ok(()),
            },
            Err(_) => return Ok(()),
        };
        let winner = winner.downcast::<PyString>()?;
        let newer = match self.open.find(winner.to_str()?) {
            Some(i) => lost.last_ts > self.open.at(i).last_ts,
            None => true,
        };
        if newer {
            self.put(winner, lost.last_ts, lost.tps, lost.chs)?;
        }
        Ok(())
    }

    /// `list(open.items())`, in the dict's order.
    fn items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty_bound(py);
        for e in self.open.iter() {
            out.append((e.cid.bound(py), self.journey(py, e)))?;
        }
        Ok(out)
    }

    /// The steps (touchpoints for `level` 0, channels for 1) of every non-empty open journey
    /// idle for the null horizon at `now_ms`, as tuples, in the dict's order (what
    /// `PathAccumulator.paths` counts as null).
    fn idle<'py>(&self, py: Python<'py>, level: usize, now_ms: i64) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty_bound(py);
        for e in self.open.iter() {
            let codes = if level == 0 { &e.tps } else { &e.chs };
            if !codes.is_empty() && now_ms - e.last_ts >= self.horizon_ms {
                out.append(PyTuple::new_bound(py, codes.iter().map(|&c| self.strs.py[c as usize].bound(py))))?;
            }
        }
        Ok(out)
    }

    /// `list(open)`, in the dict's order.
    fn keys<'py>(&self, py: Python<'py>) -> Bound<'py, PyList> {
        let keys: Vec<Bound<'py, PyString>> = self.open.iter().map(|e| e.cid.bound(py)).collect();
        PyList::new_bound(py, keys)
    }

    fn __len__(&self) -> usize {
        self.open.len()
    }

    fn __contains__(&self, cid: &str) -> bool {
        self.open.contains(cid)
    }
}

/// Where `add_one` reads what it is not given: the event's TouchpointEvent (`add`), or the
/// ResolvedEvent and the channel of a released record (`add` of a `NativeReleased`).
enum Src<'a, 'py> {
    Event(&'a Bound<'py, PyAny>),
    Record(&'a Bound<'py, PyAny>, Bound<'py, PyString>),
}

impl NativePaths {
    /// One event of `add`: what is not given is read from `src` (a conversion's revenue, and
    /// the channel of an event).
    #[allow(clippy::too_many_arguments)]
    fn add_one<'py>(
        &mut self,
        py: Python<'py>,
        done: [&Bound<'_, PyDict>; 2],
        zero: &Bound<'_, PyAny>,
        cid: &Bound<'_, PyString>,
        ts: i64,
        tp: &Bound<'_, PyString>,
        src: Src<'_, 'py>,
    ) -> PyResult<()> {
        let horizon_ms = self.horizon_ms;
        let tp = self.code(py, tp)?;
        let found = self.open.find(cid.to_str()?);
        let (mut tps, mut chs) = match found {
            Some(i) => {
                let e = self.open.at_mut(i);
                let last_ts = e.last_ts;
                let (mut tps, mut chs) = (std::mem::take(&mut e.tps), std::mem::take(&mut e.chs));
                if ts - last_ts >= horizon_ms {
                    self.close(py, done, &tps, &chs, 2, None)?;
                    // (a new journey, in the old one's vectors)
                    tps.clear();
                    chs.clear();
                }
                (tps, chs)
            }
            None => (Vec::new(), Vec::new()),
        };
        match self.kind[tp as usize] {
            CONVERSION => {
                let te = match &src {
                    Src::Event(te) => (*te).clone(),
                    Src::Record(ev, _) => self.slots.get(ev, EVENT)?,
                };
                let rev = dict_or_attr(&te, instance_dict(&te), intern!(py, "revenue"))?;
                let value = if rev.is_truthy()? { rev } else { zero.clone() };
                self.close(py, done, &tps, &chs, 0, Some(&value))?;
                tps.clear();
                chs.clear();
            }
            CHURN => {
                self.close(py, done, &tps, &chs, 2, None)?;
                tps.clear();
                chs.clear();
            }
            _ => {
                tps.push(tp);
                let ch = match src {
                    Src::Record(_, ch) => self.code(py, &ch)?,
                    Src::Event(te) => {
                        let ch = dict_or_attr(te, instance_dict(te), intern!(py, "channel"))?;
                        self.code(py, ch.downcast()?)?
                    }
                };
                chs.push(ch);
            }
        }
        match found {
            Some(i) => {
                let e = self.open.at_mut(i);
                e.last_ts = ts;
                e.tps = tps;
                e.chs = chs;
            }
            None => self.put(cid, ts, tps, chs)?,
        }
        Ok(())
    }
}
