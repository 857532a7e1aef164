//! `FunnelTracker.update` and `FunnelTracker.advance` (`processors/funnels.py`), the funnels'
//! per-event and per-deadline loops, and `merge_customer`, `detach` and `attach` (the replay of
//! a customer's runs, `_walk` and `_count`), with the open runs in native memory (issue 4).
//!
//! The open runs of each funnel live in a `NativeRuns`: per customer the stage, the time it was
//! entered, the run start, the cell key (the Python tuple `(funnel, segment, cohort week)`, the
//! very object the cells dict holds) and the run's event codes, in a map that keeps the
//! insertion order of the Python dict `state.runs[funnel]` it stands for (a customer set again
//! keeps its place; one removed and set again goes last). The wrapper
//! (`processors/funnels_native.py`) shows it as a mapping of `FunnelRun`s built on each read and
//! pickles it as that dict. The cells (`StageCounts` with their `Durations`), the deadline heaps
//! and the cohort-week cache stay the tracker's Python objects, changed here by the same
//! operations in the same order as the Python methods: the same heap pushes and pops (`heapq`'s
//! algorithm, `heap.rs`), the same list slots counted, `Durations` filled and emptied as its
//! `add` and `remove` do. So the state, its pickles and the Python methods that read it
//! (snapshots) are unchanged, and the `FunnelTransition` records are the Python ones, field
//! for field, in the same order.

use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use crate::heap::{heappop, heappush};
use crate::ordered::{Keyed, Ordered};
use crate::pending::NativeReleased;
use crate::paths::{EventSlots, CUSTOMER_ID, EVENT, SEGMENT, TS_MS};
use crate::{dict_or_attr, instance_dict, slot_offset, PStr};

const STAGE_BITS: u32 = 6;
const OUTSIDE: i64 = -1;
const DAY_MS: i64 = 86_400_000;

// `FunnelRun`'s fields, in the order of its constructor.
const STAGE: usize = 0;
const STAGE_ENTERED_MS: usize = 1;
const RUN_START_MS: usize = 2;
const CELL: usize = 3;
const EVENTS: usize = 4;
const RUN_FIELDS: [&str; 5] = ["stage", "stage_entered_ms", "run_start_ms", "cell", "events"];

/// `FunnelRun`s made and read at their slots' offsets (as the dataclass's `__init__` and
/// attribute access would), by attribute for any other type.
struct RunType {
    ty: Py<PyAny>,
    off: Option<[isize; 5]>,
}

impl RunType {
    fn new(ty: &Bound<'_, PyAny>) -> RunType {
        let py = ty.py();
        let offs = RUN_FIELDS.map(|n| slot_offset(ty, &PyString::new_bound(py, n)));
        let off = if offs.iter().all(|o| o.is_some()) { Some(offs.map(|o| o.unwrap())) } else { None };
        RunType { ty: ty.clone().unbind(), off }
    }

    /// `run.<field i>`.
    fn get<'py>(&self, run: &Bound<'py, PyAny>, i: usize) -> PyResult<Bound<'py, PyAny>> {
        if let Some(off) = self.off {
            if unsafe { ffi::Py_TYPE(run.as_ptr()) } as *mut ffi::PyObject == self.ty.as_ptr() {
                let v = unsafe { *((run.as_ptr() as *mut u8).offset(off[i]) as *mut *mut ffi::PyObject) };
                if !v.is_null() {
                    return Ok(unsafe { Bound::from_borrowed_ptr(run.py(), v) });
                }
            }
        }
        run.getattr(RUN_FIELDS[i])
    }

    /// `FunnelRun(*fields)`.
    fn make<'py>(&self, py: Python<'py>, fields: [Bound<'py, PyAny>; 5]) -> PyResult<Bound<'py, PyAny>> {
        let off = match self.off {
            Some(off) => off,
            None => return self.ty.bind(py).call1(PyTuple::new_bound(py, fields)),
        };
        unsafe {
            let tp = self.ty.as_ptr() as *mut ffi::PyTypeObject;
            let alloc = (*tp).tp_alloc.unwrap_or(ffi::PyType_GenericAlloc);
            let obj = alloc(tp, 0);
            if obj.is_null() {
                return Err(PyErr::fetch(py));
            }
            for (i, v) in fields.into_iter().enumerate() {
                *((obj as *mut u8).offset(off[i]) as *mut *mut ffi::PyObject) = v.into_ptr();
            }
            Ok(Bound::from_owned_ptr(py, obj))
        }
    }
}

/// One customer's open run of one funnel: a `FunnelRun`'s fields.
struct Run {
    cid: PStr,
    stage: i64,
    entered: i64,
    start: i64,
    cell: Py<PyTuple>, // the cells dict's key (funnel, segment, cohort week)
    events: Vec<i64>,  // ts_ms << 6 | stage, every funnel event since the run started
}

impl Keyed for Run {
    fn cid(&self) -> &PStr {
        &self.cid
    }
}

/// The open runs of one funnel (`state.runs[funnel]`), see the module doc.
#[pyclass(module = "journeymap_journeys")]
pub struct NativeRuns {
    run_type: RunType,   // FunnelRun
    array_type: Py<PyAny>, // array.array
    open: Ordered<Run>,
}

impl NativeRuns {
    fn find(&self, cid: &str) -> Option<usize> {
        self.open.find(cid)
    }

    fn run(&self, i: usize) -> &Run {
        self.open.at(i)
    }

    fn run_mut(&mut self, i: usize) -> &mut Run {
        self.open.at_mut(i)
    }

    /// Set `cid`'s run: in its place when open, else last.
    fn put(&mut self, cid: &Bound<'_, PyString>, run: Run) -> PyResult<()> {
        self.open.put(cid.to_str()?, run);
        Ok(())
    }

    fn remove(&mut self, cid: &str) -> Option<Run> {
        self.open.remove(cid)
    }

    /// The run as the `FunnelRun` the Python tracker would hold (a new one).
    fn funnel_run<'py>(&self, py: Python<'py>, r: &Run) -> PyResult<Bound<'py, PyAny>> {
        let bytes: &[u8] = unsafe {
            std::slice::from_raw_parts(r.events.as_ptr() as *const u8, r.events.len() * std::mem::size_of::<i64>())
        };
        // array("q", bytes) reads them as `frombytes` does: machine order, as a Vec<i64> holds them
        let events = self.array_type.bind(py).call1(("q", PyBytes::new_bound(py, bytes)))?;
        self.run_type.make(
            py,
            [
                r.stage.into_py(py).into_bound(py),
                r.entered.into_py(py).into_bound(py),
                r.start.into_py(py).into_bound(py),
                r.cell.clone_ref(py).into_bound(py).into_any(),
                events,
            ],
        )
    }
}

#[pymethods]
impl NativeRuns {
    /// `run_type`: `FunnelRun`; `array_type`: `array.array` (a run's events as read).
    #[new]
    fn new(py: Python<'_>, run_type: Py<PyAny>, array_type: Py<PyAny>) -> Self {
        NativeRuns {
            run_type: RunType::new(run_type.bind(py)),
            array_type,
            open: Ordered::new(),
        }
    }

    /// `runs[cid]` as a new `FunnelRun`, or None.
    fn get<'py>(&self, py: Python<'py>, cid: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
        match self.find(cid) {
            Some(i) => Ok(Some(self.funnel_run(py, self.run(i))?)),
            None => Ok(None),
        }
    }

    /// `runs[cid] = run` (a `FunnelRun`, or anything with its fields; its events are copied).
    fn set(&mut self, cid: &Bound<'_, PyString>, run: &Bound<'_, PyAny>) -> PyResult<()> {
        let t = &self.run_type;
        let new = Run {
            cid: PStr::of(cid),
            stage: t.get(run, STAGE)?.extract()?,
            entered: t.get(run, STAGE_ENTERED_MS)?.extract()?,
            start: t.get(run, RUN_START_MS)?.extract()?,
            cell: t.get(run, CELL)?.downcast_into::<PyTuple>()?.unbind(),
            events: t.get(run, EVENTS)?.extract()?,
        };
        self.put(cid, new)
    }

    /// `runs.pop(cid)`: the run as a `FunnelRun`, or None when `cid` has none open.
    fn pop<'py>(&mut self, py: Python<'py>, cid: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
        match self.remove(cid) {
            Some(r) => Ok(Some(self.funnel_run(py, &r)?)),
            None => Ok(None),
        }
    }

    /// `list(runs.items())`, in the dict's order.
    fn items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty_bound(py);
        for r in self.open.iter() {
            out.append((r.cid.bound(py), self.funnel_run(py, r)?))?;
        }
        Ok(out)
    }

    /// `list(runs)`, in the dict's order.
    fn keys<'py>(&self, py: Python<'py>) -> Bound<'py, PyList> {
        let keys: Vec<Bound<'py, PyString>> = self.open.iter().map(|r| r.cid.bound(py)).collect();
        PyList::new_bound(py, keys)
    }

    fn __len__(&self) -> usize {
        self.open.len()
    }

    fn __contains__(&self, cid: &str) -> bool {
        self.open.contains(cid)
    }
}

/// A funnel as the constructor takes it: `(name, stage names, window_ms, strict)`.
type FunnelSpec = (Py<PyString>, Vec<Py<PyString>>, i64, bool);

/// One compiled funnel (`_Compiled`): its name, stage names, last stage, window and order.
struct Funnel {
    name: Py<PyString>,
    names: Vec<Py<PyString>>,
    n_stages: i64,
    last: i64,
    window_ms: i64,
    strict: bool,
}

/// The tracker's loops: one per tracker, built from its compiled funnels and routes.
#[pyclass(module = "journeymap_journeys")]
pub struct NativeFunnelStep {
    funnels: Vec<Funnel>,
    route_of: Py<PyDict>,          // touchpoint -> index into `routes`
    routes: Vec<Vec<(usize, i64)>>, // (funnel index, stage), in the tracker's route order
    transition_type: Py<PyAny>,    // FunnelTransition
    counts_empty: Py<PyAny>,       // StageCounts.empty
    cohort_week: Py<PyAny>,
    exact_max: usize,
    empty: Py<PyString>,
    slots: EventSlots,
}

/// A record of `ty` (a tuple subclass), built as `tuple.__new__(ty, items)` builds it.
fn record<'py>(py: Python<'py>, ty: &Py<PyAny>, items: Vec<PyObject>) -> PyResult<Bound<'py, PyAny>> {
    unsafe {
        let tp = ty.as_ptr() as *mut ffi::PyTypeObject;
        let alloc = (*tp).tp_alloc.unwrap_or(ffi::PyType_GenericAlloc);
        let obj = alloc(tp, items.len() as ffi::Py_ssize_t);
        if obj.is_null() {
            return Err(PyErr::fetch(py));
        }
        for (i, p) in items.into_iter().enumerate() {
            ffi::PyTuple_SET_ITEM(obj, i as ffi::Py_ssize_t, p.into_ptr());
        }
        Ok(Bound::from_owned_ptr(py, obj))
    }
}

/// `lst[i] += by` on a list of ints.
fn bump(lst: &Bound<'_, PyAny>, i: i64, by: i64) -> PyResult<()> {
    let lst = lst.downcast::<PyList>()?;
    let i = i as usize;
    let n: i64 = lst.get_item(i)?.extract()?;
    lst.set_item(i, n + by)
}

/// The tracker's state one call works on: each funnel's open runs and deadline heap (in the
/// funnels' order), the cells, and the list the transitions go to.
struct State<'py> {
    runs: Vec<PyRefMut<'py, NativeRuns>>,
    deadlines: Vec<Bound<'py, PyList>>,
    cells: Bound<'py, PyDict>,
    out: Bound<'py, PyList>,
    n_entered: &'py Bound<'py, PyString>,
    n_advanced: &'py Bound<'py, PyString>,
    n_dropped: &'py Bound<'py, PyString>,
    advance_ms: &'py Bound<'py, PyString>,
}

impl<'py> State<'py> {
    fn new(
        py: Python<'py>,
        n_funnels: usize,
        runs: Vec<Bound<'py, NativeRuns>>,
        deadlines: Vec<Bound<'py, PyList>>,
        cells: &Bound<'py, PyDict>,
        out: &Bound<'py, PyList>,
    ) -> PyResult<State<'py>> {
        if runs.len() != n_funnels || deadlines.len() != n_funnels {
            return Err(PyValueError::new_err("one runs map and one deadline heap per funnel"));
        }
        let mut borrowed = Vec::with_capacity(runs.len());
        for r in runs {
            borrowed.push(r.try_borrow_mut()?);
        }
        Ok(State {
            runs: borrowed,
            deadlines,
            cells: cells.clone(),
            out: out.clone(),
            n_entered: intern!(py, "n_entered"),
            n_advanced: intern!(py, "n_advanced"),
            n_dropped: intern!(py, "n_dropped"),
            advance_ms: intern!(py, "advance_ms"),
        })
    }
}

impl NativeFunnelStep {
    /// The `FunnelTransition` of a move of `cid` in funnel `fi` from stage `frm` to `to`
    /// (`OUTSIDE` is the name ""). `converted` as the caller's Python twin says it: `update`'s
    /// when an advance reaches the last stage, a merge's when `to` is the last stage (an entry
    /// to stage 0 of a funnel of one stage too).
    #[allow(clippy::too_many_arguments)]
    fn transition<'py>(
        &self,
        py: Python<'py>,
        fi: usize,
        cid: &Bound<'py, PyAny>,
        frm: i64,
        to: i64,
        ts: PyObject,
        spent: Option<i64>,
        segment: Bound<'py, PyAny>,
        week: Bound<'py, PyAny>,
        converted: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let f = &self.funnels[fi];
        let name = |i: i64| {
            if i == OUTSIDE {
                self.empty.clone_ref(py).into_any()
            } else {
                f.names[i as usize].clone_ref(py).into_any()
            }
        };
        let items = vec![
            cid.clone().unbind(),
            f.name.clone_ref(py).into_any(),
            frm.into_py(py),
            to.into_py(py),
            name(frm),
            name(to),
            ts,
            spent.into_py(py),
            segment.unbind(),
            week.unbind(),
            converted.into_py(py),
        ];
        record(py, &self.transition_type, items)
    }

    /// `Durations.add(value_ms)`.
    fn durations_add(&self, py: Python<'_>, d: &Bound<'_, PyAny>, value_ms: i64) -> PyResult<()> {
        let n_n = intern!(py, "n");
        let n: i64 = d.getattr(n_n)?.extract()?;
        d.setattr(n_n, n + 1)?;
        let exact = d.getattr(intern!(py, "exact"))?;
        if exact.is_none() {
            d.call_method1(intern!(py, "_bucket"), (value_ms, 1))?;
            return Ok(());
        }
        let exact = exact.downcast_into::<PyList>()?;
        exact.append(value_ms)?;
        if exact.len() > self.exact_max {
            d.call_method0(intern!(py, "_fold"))?;
        }
        Ok(())
    }

    /// `FunnelTracker._drop`: `cid`'s run (`text`, at entry `i`) leaves at its deadline, from
    /// the stage it is in.
    fn drop_run<'py>(
        &self,
        py: Python<'py>,
        t: &mut State<'py>,
        fi: usize,
        cid: &Bound<'py, PyAny>,
        text: &str,
        i: usize,
    ) -> PyResult<()> {
        let f = &self.funnels[fi];
        let r = t.runs[fi].run(i);
        let (stage, entered, deadline) = (r.stage, r.entered, r.start + f.window_ms);
        let key = r.cell.clone_ref(py).into_bound(py);
        let cell = t.cells.as_any().get_item(&key)?;
        bump(&cell.getattr(t.n_dropped)?, stage, 1)?;
        t.runs[fi].remove(text);
        let ts = deadline.into_py(py);
        let (seg, week) = (key.get_item(1)?, key.get_item(2)?);
        t.out.append(self.transition(py, fi, cid, stage, OUTSIDE, ts, Some(deadline - entered), seg, week, false)?)
    }
}

#[pymethods]
impl NativeFunnelStep {
    /// `funnels`: per compiled funnel `(name, stage names, window_ms, strict)`; `routes`:
    /// touchpoint -> [(funnel index, stage)] (the tracker's `_routes`, in its order);
    /// `exact_max`: `Durations`' `EXACT_DURATIONS_MAX`.
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        funnels: Vec<FunnelSpec>,
        routes: &Bound<'_, PyDict>,
        transition_type: Py<PyAny>,
        counts_empty: Py<PyAny>,
        cohort_week: Py<PyAny>,
        exact_max: usize,
    ) -> PyResult<Self> {
        let mut fs = Vec::with_capacity(funnels.len());
        for (name, names, window_ms, strict) in funnels {
            if names.is_empty() || names.len() > (1 << STAGE_BITS) {
                return Err(PyValueError::new_err("a funnel has 1 to 64 stages"));
            }
            let n = names.len() as i64;
            fs.push(Funnel { name, names, n_stages: n, last: n - 1, window_ms, strict });
        }
        let route_of = PyDict::new_bound(py);
        let mut rs = Vec::new();
        for (tp, route) in routes.iter() {
            let route: Vec<(usize, i64)> = route.extract()?;
            for &(fi, s) in &route {
                if fi >= fs.len() || s < 0 || s >= fs[fi].n_stages {
                    return Err(PyValueError::new_err("a route names a funnel or stage not given"));
                }
            }
            route_of.set_item(tp, rs.len())?;
            rs.push(route);
        }
        Ok(NativeFunnelStep {
            funnels: fs,
            route_of: route_of.unbind(),
            routes: rs,
            transition_type,
            counts_empty,
            cohort_week,
            exact_max,
            empty: PyString::new_bound(py, "").unbind(),
            slots: EventSlots::new(),
        })
    }

    /// `FunnelTracker.update`'s loop: `runs` and `deadlines` are the open runs (`NativeRuns`)
    /// and deadline heap of each funnel (in the funnels' order), `cells` the state's cells,
    /// `weeks` the tracker's day -> cohort week cache; transitions and late events are appended
    /// to `out` and `late`. `events` are `ResolvedEvent`s, or a `NativeReleased` batch of the
    /// chain's reorder buffer (its records are read instead of the events).
    #[allow(clippy::too_many_arguments)]
    fn update<'py>(
        &mut self,
        py: Python<'py>,
        events: &Bound<'py, PyAny>,
        runs: Vec<Bound<'py, NativeRuns>>,
        deadlines: Vec<Bound<'py, PyList>>,
        cells: &Bound<'py, PyDict>,
        weeks: &Bound<'py, PyDict>,
        watermark_ms: i64,
        out: &Bound<'py, PyList>,
        late: &Bound<'py, PyList>,
    ) -> PyResult<()> {
        let mut t = State::new(py, self.funnels.len(), runs, deadlines, cells, out)?;
        let route_of = self.route_of.bind(py);
        if let Ok(batch) = events.downcast::<NativeReleased>() {
            for r in &batch.borrow().recs {
                let ri = match route_of.get_item(r.tp.bound(py))? {
                    Some(i) => i.extract::<usize>()?,
                    None => continue,
                };
                let ts_obj = r.ts.into_py(py).into_bound(py);
                let (ev, cid, seg) = (r.ev.bound(py), r.cid.bound(py), r.seg.bound(py));
                self.route_event(py, &mut t, ri, &ev, r.ts, &ts_obj, &cid, Some(seg), weeks, watermark_ms, late)?;
            }
            return Ok(());
        }
        let n_touchpoint = intern!(py, "touchpoint");
        // First the events some funnel cares about (a short loop whose reads of the events,
        // cold by the time they are released, overlap), then their moves.
        let mut routed = Vec::new();
        for ev in events.iter()? {
            let ev = ev?;
            self.slots.learn(&ev);
            let te = self.slots.get(&ev, EVENT)?;
            let tp = dict_or_attr(&te, instance_dict(&te), n_touchpoint)?;
            if let Some(i) = route_of.get_item(&tp)? {
                routed.push((ev, i.extract::<usize>()?));
            }
        }
        for (ev, ri) in routed {
            let ts_obj = self.slots.get(&ev, TS_MS)?;
            let ts: i64 = ts_obj.extract()?;
            let cid = self.slots.get(&ev, CUSTOMER_ID)?.downcast_into::<PyString>()?;
            self.route_event(py, &mut t, ri, &ev, ts, &ts_obj, &cid, None, weeks, watermark_ms, late)?;
        }
        Ok(())
    }

    /// `FunnelTracker.advance`'s loop, the watermark already checked and set by the caller:
    /// drop every run whose deadline is before `watermark_ms`, funnel by funnel.
    fn advance<'py>(
        &self,
        py: Python<'py>,
        watermark_ms: i64,
        runs: Vec<Bound<'py, NativeRuns>>,
        deadlines: Vec<Bound<'py, PyList>>,
        cells: &Bound<'py, PyDict>,
        out: &Bound<'py, PyList>,
    ) -> PyResult<()> {
        let mut t = State::new(py, self.funnels.len(), runs, deadlines, cells, out)?;
        for fi in 0..self.funnels.len() {
            let heap = t.deadlines[fi].clone();
            while !heap.is_empty() {
                let top: i64 = heap.get_item(0)?.downcast_into::<PyTuple>()?.get_item(0)?.extract()?;
                if top >= watermark_ms {
                    break;
                }
                let entry = heappop(&heap)?.downcast_into::<PyTuple>()?;
                let cid = entry.get_item(1)?;
                let start: i64 = entry.get_item(2)?.extract()?;
                let text = match cid.downcast::<PyString>() {
                    Ok(s) => s.to_str()?,
                    Err(_) => continue, // no run is kept under anything but a string
                };
                if let Some(i) = t.runs[fi].find(text) {
                    if t.runs[fi].run(i).start == start {
                        self.drop_run(py, &mut t, fi, &cid, text, i)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// `FunnelTracker.merge_customer`: `loser`'s open runs folded into `winner`'s by replaying
    /// both runs' events per funnel; the moves new to the replay are appended to `out`.
    #[allow(clippy::too_many_arguments)]
    fn merge_customer<'py>(
        &self,
        py: Python<'py>,
        loser: &Bound<'py, PyString>,
        winner: &Bound<'py, PyString>,
        tracked: Tracked<'py>,
        out: &Bound<'py, PyList>,
    ) -> PyResult<()> {
        let (runs, deadlines, cells, weeks, watermark_ms) = tracked;
        let weeks = &weeks;
        let mut t = State::new(py, self.funnels.len(), runs, deadlines, &cells, out)?;
        let (lose, win) = (loser.to_str()?, winner.to_str()?);
        if lose == win {
            return Ok(());
        }
        let mut touched: Vec<Py<PyTuple>> = Vec::new();
        for fi in 0..self.funnels.len() {
            let lost = match t.runs[fi].remove(lose) {
                Some(r) => r,
                None => continue,
            };
            let kept = t.runs[fi].remove(win);
            let old: Vec<Run> = kept.into_iter().chain(std::iter::once(lost)).collect();
            let mut items = Vec::new();
            let mut before: Vec<((i64, i64, i64), u32)> = Vec::new();
            for r in &old {
                let own = items_of(py, r)?;
                touched.push(r.cell.clone_ref(py));
                for m in self.walk(py, &mut t, fi, &own, weeks, watermark_ms, None)? {
                    self.count(py, &t, fi, &m, -1)?;
                    let k = (m.frm, m.to, m.ts);
                    match before.iter_mut().find(|(b, _)| *b == k) {
                        Some((_, n)) => *n += 1,
                        None => before.push((k, 1)),
                    }
                }
                items.extend(own);
            }
            sort_items(&mut items)?;
            let last = self.funnels[fi].last;
            for m in self.walk(py, &mut t, fi, &items, weeks, watermark_ms, Some(winner))? {
                self.count(py, &t, fi, &m, 1)?;
                let k = (m.frm, m.to, m.ts);
                if let Some((_, n)) = before.iter_mut().find(|(b, n)| *b == k && *n > 0) {
                    *n -= 1;
                    continue;
                }
                let (seg, week) = (m.cell.get_item(1)?, m.cell.get_item(2)?);
                let moved = self.transition(py, fi, winner.as_any(), m.frm, m.to, m.ts.into_py(py), m.spent, seg, week, m.to == last)?;
                t.out.append(moved)?;
            }
        }
        for key in touched {
            self.drop_if_empty(&t, key.bind(py).as_any())?;
        }
        Ok(())
    }

    /// `FunnelTracker.detach`: `cid`'s open runs removed, with their share of the cells, and
    /// returned as `{funnel: FunnelRun}`.
    #[allow(clippy::too_many_arguments)]
    fn detach<'py>(
        &self,
        py: Python<'py>,
        cid: &Bound<'py, PyString>,
        tracked: Tracked<'py>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let (runs, deadlines, cells, weeks, watermark_ms) = tracked;
        let weeks = &weeks;
        let out = PyDict::new_bound(py);
        let mut t = State::new(py, self.funnels.len(), runs, deadlines, &cells, &PyList::empty_bound(py))?;
        let text = cid.to_str()?;
        for fi in 0..self.funnels.len() {
            let r = match t.runs[fi].remove(text) {
                Some(r) => r,
                None => continue,
            };
            let run = t.runs[fi].funnel_run(py, &r)?;
            let items = items_of(py, &r)?;
            for m in self.walk(py, &mut t, fi, &items, weeks, watermark_ms, None)? {
                self.count(py, &t, fi, &m, -1)?;
            }
            self.drop_if_empty(&t, r.cell.bind(py).as_any())?;
            out.set_item(self.funnels[fi].name.bind(py), run)?;
        }
        Ok(out)
    }

    /// `FunnelTracker.attach`: adopt runs detached elsewhere (a mapping funnel -> `FunnelRun`,
    /// read by its `items()`), with their share of the cells and their deadlines; a funnel not
    /// tracked here, or one `cid` already has a run in, is skipped.
    #[allow(clippy::too_many_arguments)]
    fn attach<'py>(
        &self,
        py: Python<'py>,
        cid: &Bound<'py, PyString>,
        detached: &Bound<'py, PyAny>,
        tracked: Tracked<'py>,
    ) -> PyResult<()> {
        let (runs, deadlines, cells, weeks, watermark_ms) = tracked;
        let weeks = &weeks;
        let mut t = State::new(py, self.funnels.len(), runs, deadlines, &cells, &PyList::empty_bound(py))?;
        let text = cid.to_str()?;
        for item in detached.call_method0(intern!(py, "items"))?.iter()? {
            let (name, run): (Bound<'py, PyAny>, Bound<'py, PyAny>) = item?.extract()?;
            let fi = match self.funnel_named(py, &name)? {
                Some(fi) if !t.runs[fi].open.contains(text) => fi,
                _ => continue,
            };
            t.runs[fi].set(cid, &run)?;
            let i = t.runs[fi].find(text).unwrap_or(0);
            let (items, start) = {
                let r = t.runs[fi].run(i);
                (items_of(py, r)?, r.start)
            };
            for m in self.walk(py, &mut t, fi, &items, weeks, watermark_ms, None)? {
                self.count(py, &t, fi, &m, 1)?;
            }
            let window = self.funnels[fi].window_ms;
            let deadline = PyTuple::new_bound(py, [(start + window).into_py(py), cid.clone().into_any().unbind(), start.into_py(py)]);
            heappush(&t.deadlines[fi], &deadline)?;
        }
        Ok(())
    }
}

impl NativeFunnelStep {
    /// `FunnelTracker._week`: the cohort week of `ts`, through the tracker's day -> week cache.
    fn week<'py>(&self, py: Python<'py>, ts: i64, weeks: &Bound<'py, PyDict>) -> PyResult<Bound<'py, PyAny>> {
        let day = ts.div_euclid(DAY_MS);
        Ok(match weeks.get_item(day)? {
            Some(w) => w,
            None => {
                let w = self.cohort_week.bind(py).call1((ts,))?;
                weeks.set_item(day, &w)?;
                w
            }
        })
    }

    /// `FunnelTracker._start`: a run of funnel `fi` starts at stage 0.
    #[allow(clippy::too_many_arguments)]
    fn start<'py>(
        &self,
        py: Python<'py>,
        t: &mut State<'py>,
        fi: usize,
        cid: &Bound<'py, PyString>,
        segment: Bound<'py, PyAny>,
        ts: i64,
        weeks: &Bound<'py, PyDict>,
    ) -> PyResult<()> {
        let f = &self.funnels[fi];
        let week = self.week(py, ts, weeks)?;
        let key = PyTuple::new_bound(py, [f.name.bind(py).as_any(), &segment, &week]);
        let cell = match t.cells.get_item(&key)? {
            Some(c) => c,
            None => {
                let c = self.counts_empty.bind(py).call1((f.n_stages,))?;
                t.cells.set_item(&key, &c)?;
                c
            }
        };
        bump(&cell.getattr(t.n_entered)?, 0, 1)?;
        let run = Run {
            cid: PStr::of(cid),
            stage: 0,
            entered: ts,
            start: ts,
            cell: key.unbind(),
            events: {
                let mut v = Vec::with_capacity(4);
                v.push(ts << STAGE_BITS);
                v
            },
        };
        t.runs[fi].put(cid, run)?;
        let deadline = PyTuple::new_bound(py, [(ts + f.window_ms).into_py(py), cid.clone().into_any().unbind(), ts.into_py(py)]);
        heappush(&t.deadlines[fi], &deadline)?;
        t.out.append(self.transition(py, fi, cid.as_any(), OUTSIDE, 0, ts.into_py(py), None, segment, week, false)?)
    }

    /// One routed event of `update` (route `ri`): `segment` read from `ev` when not given.
    #[allow(clippy::too_many_arguments)]
    fn route_event<'py>(
        &self,
        py: Python<'py>,
        t: &mut State<'py>,
        ri: usize,
        ev: &Bound<'py, PyAny>,
        ts: i64,
        ts_obj: &Bound<'py, PyAny>,
        cid: &Bound<'py, PyString>,
        segment: Option<Bound<'py, PyAny>>,
        weeks: &Bound<'py, PyDict>,
        watermark_ms: i64,
        late: &Bound<'py, PyList>,
    ) -> PyResult<()> {
        if ts < watermark_ms {
            late.append(ev)?;
            return Ok(());
        }
        let text = cid.to_str()?;
        let cid_any = cid.as_any();
        for &(fi, s) in &self.routes[ri] {
            let f = &self.funnels[fi];
            let mut found = t.runs[fi].find(text);
            if let Some(i) = found {
                let r = t.runs[fi].run(i);
                if ts < r.entered {
                    let n = late.len();
                    if n == 0 || !late.get_item(n - 1)?.is(ev) {
                        late.append(ev)?;
                    }
                    continue;
                }
                if ts > r.start + f.window_ms {
                    self.drop_run(py, t, fi, cid_any, text, i)?;
                    found = None;
                }
            }
            let i = match found {
                Some(i) => i,
                None => {
                    if s == 0 {
                        let seg = match &segment {
                            Some(s) => s.clone(),
                            None => self.slots.get(ev, SEGMENT)?,
                        };
                        self.start(py, t, fi, cid, seg, ts, weeks)?;
                    }
                    continue;
                }
            };
            let r = t.runs[fi].run_mut(i);
            r.events.push(ts << STAGE_BITS | s);
            let c = r.stage;
            if s <= c || (f.strict && s != c + 1) {
                continue;
            }
            let spent = ts - r.entered;
            let key = r.cell.clone_ref(py).into_bound(py);
            let cell = t.cells.as_any().get_item(&key)?;
            bump(&cell.getattr(t.n_advanced)?, c, 1)?;
            let durations = cell.getattr(t.advance_ms)?.get_item(c)?;
            self.durations_add(py, &durations, spent)?;
            bump(&cell.getattr(t.n_entered)?, s, 1)?;
            let (seg, week) = (key.get_item(1)?, key.get_item(2)?);
            t.out.append(self.transition(py, fi, cid_any, c, s, ts_obj.clone().unbind(), Some(spent), seg, week, s == f.last)?)?;
            if s == f.last {
                t.runs[fi].remove(text);
            } else {
                let r = t.runs[fi].run_mut(i);
                r.stage = s;
                r.entered = ts;
            }
        }
        Ok(())
    }
}

/// The tracker's state a merge works on: each funnel's open runs and deadline heap (in the
/// funnels' order), the cells, the day -> cohort week cache and the watermark.
type Tracked<'py> = (Vec<Bound<'py, NativeRuns>>, Vec<Bound<'py, PyList>>, Bound<'py, PyDict>, Bound<'py, PyDict>, i64);

/// One move of a replay (`FunnelTracker._walk`): from and to stage, time, time in the stage
/// left (None on entry) and the cell key of its run.
struct Move<'py> {
    frm: i64,
    to: i64,
    ts: i64,
    spent: Option<i64>,
    cell: Bound<'py, PyTuple>,
}

/// A run being replayed: stage, its entry, run start, cell key, index of its first event.
struct Replay<'py> {
    stage: i64,
    entered: i64,
    start: i64,
    cell: Bound<'py, PyTuple>,
    first: usize,
}

/// A run's events as `_walk` takes them: `(code, segment)`, the segment of the run's cell.
fn items_of<'py>(py: Python<'py>, r: &Run) -> PyResult<Vec<(i64, Bound<'py, PyAny>)>> {
    let seg = r.cell.bind(py).get_item(1)?;
    Ok(r.events.iter().map(|&c| (c, seg.clone())).collect())
}

/// `lst.remove(value)` for an int `value`: the first item equal to it deleted (a
/// `ValueError` if none is). Exact ints are compared by value here, anything else by Python's
/// `==`, as `list.remove` compares; the scan of thousands of times to advance is the cost of a
/// merge that retracts one.
fn list_remove(py: Python<'_>, lst: &Bound<'_, PyList>, value: i64) -> PyResult<()> {
    let target = value.into_py(py);
    let mut i = 0;
    let found = loop {
        // size and items read again each turn: a Python `==` may change the list
        let n = unsafe { ffi::PyList_GET_SIZE(lst.as_ptr()) };
        if i >= n {
            break None;
        }
        let o = unsafe { ffi::PyList_GET_ITEM(lst.as_ptr(), i) };
        if o == target.as_ptr() {
            break Some(i);
        }
        if unsafe { ffi::PyLong_CheckExact(o) } != 0 {
            let mut overflow = 0;
            let v = unsafe { ffi::PyLong_AsLongLongAndOverflow(o, &mut overflow) };
            if overflow == 0 && v == value {
                break Some(i);
            }
        } else {
            let item = unsafe { Bound::from_borrowed_ptr(py, o) };
            if item.eq(&target)? {
                break Some(i);
            }
        }
        i += 1;
    };
    match found {
        Some(i) => lst.del_item(i as usize),
        None => Err(PyValueError::new_err("list.remove(x): x not in list")),
    }
}

/// `sorted(items)` for `(code, segment)` pairs: by code, then segment (Python's `<`, for the
/// rare events at the same millisecond and stage); stable, as `sorted`.
fn sort_items(items: &mut [(i64, Bound<'_, PyAny>)]) -> PyResult<()> {
    let mut err = None;
    items.sort_by(|a, b| {
        a.0.cmp(&b.0).then_with(|| {
            if err.is_some() {
                return std::cmp::Ordering::Equal;
            }
            let less = |x: &Bound<'_, PyAny>, y: &Bound<'_, PyAny>| x.lt(y);
            match (less(&a.1, &b.1), less(&b.1, &a.1)) {
                (Ok(true), Ok(_)) => std::cmp::Ordering::Less,
                (Ok(false), Ok(true)) => std::cmp::Ordering::Greater,
                (Ok(false), Ok(false)) => std::cmp::Ordering::Equal,
                (Err(e), _) | (_, Err(e)) => {
                    err = Some(e);
                    std::cmp::Ordering::Equal
                }
            }
        })
    });
    match err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

impl NativeFunnelStep {
    /// `FunnelTracker._walk`: the moves of one customer's funnel events (`(code, segment)` in
    /// event-time order) from no open run, as `update` and `advance` (to `watermark_ms`) make
    /// them. With `owner`, the run left open at the end becomes `owner`'s: its events, its
    /// place (last) in the runs and its deadline pushed.
    #[allow(clippy::too_many_arguments)]
    fn walk<'py>(
        &self,
        py: Python<'py>,
        t: &mut State<'py>,
        fi: usize,
        items: &[(i64, Bound<'py, PyAny>)],
        weeks: &Bound<'py, PyDict>,
        watermark_ms: i64,
        owner: Option<&Bound<'py, PyString>>,
    ) -> PyResult<Vec<Move<'py>>> {
        let f = &self.funnels[fi];
        let window = f.window_ms;
        let mut moves = Vec::new();
        let mut run: Option<Replay<'py>> = None;
        for (i, (code, seg)) in items.iter().enumerate() {
            let (ts, s) = (code >> STAGE_BITS, code & ((1 << STAGE_BITS) - 1));
            if let Some(r) = run.take() {
                if ts > r.start + window {
                    let deadline = r.start + window;
                    moves.push(Move { frm: r.stage, to: OUTSIDE, ts: deadline, spent: Some(deadline - r.entered), cell: r.cell });
                } else {
                    run = Some(r);
                }
            }
            let r = match run.as_mut() {
                Some(r) => r,
                None => {
                    if s == 0 {
                        let week = self.week(py, ts, weeks)?;
                        let cell = PyTuple::new_bound(py, [f.name.bind(py).as_any(), seg, &week]);
                        moves.push(Move { frm: OUTSIDE, to: 0, ts, spent: None, cell: cell.clone() });
                        run = Some(Replay { stage: 0, entered: ts, start: ts, cell, first: i });
                    }
                    continue;
                }
            };
            let c = r.stage;
            if s <= c || (f.strict && s != c + 1) {
                continue;
            }
            moves.push(Move { frm: c, to: s, ts, spent: Some(ts - r.entered), cell: r.cell.clone() });
            if s == f.last {
                run = None;
            } else {
                r.stage = s;
                r.entered = ts;
            }
        }
        if let Some(r) = run.take() {
            if r.start + window < watermark_ms {
                let deadline = r.start + window;
                moves.push(Move { frm: r.stage, to: OUTSIDE, ts: deadline, spent: Some(deadline - r.entered), cell: r.cell });
            } else {
                run = Some(r);
            }
        }
        if let (Some(owner), Some(r)) = (owner, run) {
            let start = r.start;
            let kept = Run {
                cid: PStr::of(owner),
                stage: r.stage,
                entered: r.entered,
                start,
                cell: r.cell.unbind(),
                events: items[r.first..].iter().map(|(c, _)| *c).collect(),
            };
            t.runs[fi].put(owner, kept)?;
            let deadline = PyTuple::new_bound(py, [(start + window).into_py(py), owner.clone().into_any().unbind(), start.into_py(py)]);
            heappush(&t.deadlines[fi], &deadline)?;
        }
        Ok(moves)
    }

    /// `FunnelTracker._count`: add (`sign` 1) or retract (-1) one move's share of the cells.
    fn count<'py>(&self, py: Python<'py>, t: &State<'py>, fi: usize, m: &Move<'py>, sign: i64) -> PyResult<()> {
        let cell = match t.cells.get_item(&m.cell)? {
            Some(c) => c,
            None => {
                let c = self.counts_empty.bind(py).call1((self.funnels[fi].n_stages,))?;
                t.cells.set_item(&m.cell, &c)?;
                c
            }
        };
        if m.to == OUTSIDE {
            return bump(&cell.getattr(t.n_dropped)?, m.frm, sign);
        }
        bump(&cell.getattr(t.n_entered)?, m.to, sign)?;
        if m.frm != OUTSIDE {
            bump(&cell.getattr(t.n_advanced)?, m.frm, sign)?;
            let durations = cell.getattr(t.advance_ms)?.get_item(m.frm)?;
            let spent = m.spent.unwrap_or(0); // an advance always has its time in the stage
            if sign > 0 {
                self.durations_add(py, &durations, spent)?;
            } else {
                self.durations_remove(py, &durations, spent)?;
            }
        }
        Ok(())
    }

    /// `Durations.remove(value_ms)`: the first equal value out of the exact list
    /// (`list.remove`, scanned here: the hot case), else the method itself (a folded sample's
    /// bucket, or an exact list of another type).
    fn durations_remove(&self, py: Python<'_>, d: &Bound<'_, PyAny>, value_ms: i64) -> PyResult<()> {
        let exact = d.getattr(intern!(py, "exact"))?;
        if let Ok(lst) = exact.downcast_exact::<PyList>() {
            let n_n = intern!(py, "n");
            let n: i64 = d.getattr(n_n)?.extract()?;
            d.setattr(n_n, n - 1)?;
            return list_remove(py, lst, value_ms);
        }
        d.call_method1(intern!(py, "remove"), (value_ms,)).map(|_| ())
    }

    /// `FunnelTracker._drop_if_empty`: a cell nobody entered nor dropped out of is removed.
    fn drop_if_empty(&self, t: &State<'_>, key: &Bound<'_, PyAny>) -> PyResult<()> {
        let cell = match t.cells.get_item(key)? {
            Some(c) => c,
            None => return Ok(()),
        };
        for name in [t.n_entered, t.n_dropped] {
            for v in cell.getattr(name)?.iter()? {
                if v?.is_truthy()? {
                    return Ok(());
                }
            }
        }
        t.cells.del_item(key)
    }

    /// The name's funnel (`FunnelTracker._by_name`: the last of that name).
    fn funnel_named(&self, py: Python<'_>, name: &Bound<'_, PyAny>) -> PyResult<Option<usize>> {
        let mut found = None;
        for (fi, f) in self.funnels.iter().enumerate() {
            if f.name.bind(py).as_any().eq(name)? {
                found = Some(fi);
            }
        }
        Ok(found)
    }
}
