//! `FunnelTracker.update` and `FunnelTracker.advance` (`processors/funnels.py`), the funnels'
//! per-event and per-deadline loops, over the same Python state (issue 4).
//!
//! The open runs (`FunnelRun`s in `state.runs`), the cells (`StageCounts` with their
//! `Durations`), the deadline heaps and the cohort-week cache stay the tracker's Python objects,
//! changed here by the same operations in the same order as the Python methods: runs made by
//! the same constructor, the same heap pushes and pops (`heapq`'s own functions), the same list
//! slots counted, `Durations` filled as its `add` fills it. So the state, its pickles and the
//! Python methods that read it (merges, detach and attach, snapshots) are unchanged, and the
//! `FunnelTransition` records are the Python ones, field for field, in the same order.

use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use crate::pending::NativeReleased;
use crate::paths::{EventSlots, CUSTOMER_ID, EVENT, SEGMENT, TS_MS};
use crate::{dict_or_attr, instance_dict, slot_offset};

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

/// `FunnelRun`s made, read and changed at their slots' offsets (as the dataclass's `__init__`
/// and attribute access would), by attribute for any other type.
struct Runs {
    ty: Py<PyAny>,
    off: Option<[isize; 5]>,
}

impl Runs {
    fn new(ty: &Bound<'_, PyAny>) -> Runs {
        let py = ty.py();
        let offs = RUN_FIELDS.map(|n| slot_offset(ty, &PyString::new_bound(py, n)));
        let off = if offs.iter().all(|o| o.is_some()) { Some(offs.map(|o| o.unwrap())) } else { None };
        Runs { ty: ty.clone().unbind(), off }
    }

    fn slot(&self, run: &Bound<'_, PyAny>, i: usize) -> Option<*mut *mut ffi::PyObject> {
        let off = self.off?;
        if unsafe { ffi::Py_TYPE(run.as_ptr()) } as *mut ffi::PyObject != self.ty.as_ptr() {
            return None;
        }
        Some(unsafe { (run.as_ptr() as *mut u8).offset(off[i]) as *mut *mut ffi::PyObject })
    }

    /// `run.<field i>`.
    fn get<'py>(&self, run: &Bound<'py, PyAny>, i: usize) -> PyResult<Bound<'py, PyAny>> {
        if let Some(p) = self.slot(run, i) {
            let v = unsafe { *p };
            if !v.is_null() {
                return Ok(unsafe { Bound::from_borrowed_ptr(run.py(), v) });
            }
        }
        run.getattr(RUN_FIELDS[i])
    }

    fn get_i64(&self, run: &Bound<'_, PyAny>, i: usize) -> PyResult<i64> {
        self.get(run, i)?.extract()
    }

    /// `run.<field i> = value`.
    fn set(&self, run: &Bound<'_, PyAny>, i: usize, value: Bound<'_, PyAny>) -> PyResult<()> {
        if let Some(p) = self.slot(run, i) {
            unsafe {
                let old = *p;
                *p = value.into_ptr();
                ffi::Py_XDECREF(old);
            }
            return Ok(());
        }
        run.setattr(RUN_FIELDS[i], value)
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
    runs: Runs,                    // FunnelRun
    counts_empty: Py<PyAny>,       // StageCounts.empty
    array_type: Py<PyAny>,         // array.array
    heappush: Py<PyAny>,
    heappop: Py<PyAny>,
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

/// The tracker's state one call works on: each funnel's runs dict and deadline heap (in the
/// funnels' order), the cells, and the list the transitions go to.
struct State<'py> {
    runs: Vec<Bound<'py, PyDict>>,
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
        runs: Vec<Bound<'py, PyDict>>,
        deadlines: Vec<Bound<'py, PyList>>,
        cells: &Bound<'py, PyDict>,
        out: &Bound<'py, PyList>,
    ) -> PyResult<State<'py>> {
        if runs.len() != n_funnels || deadlines.len() != n_funnels {
            return Err(PyValueError::new_err("one runs dict and one deadline heap per funnel"));
        }
        Ok(State {
            runs,
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
    /// (`OUTSIDE` is the name ""); converted when it advances to the last stage (an entry to
    /// stage 0 is not, even in a funnel of one stage).
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
            (frm != OUTSIDE && to == f.last).into_py(py),
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

    /// `FunnelTracker._drop`: the run leaves at its deadline, from the stage it is in.
    fn drop_run<'py>(
        &self,
        py: Python<'py>,
        t: &State<'py>,
        fi: usize,
        cid: &Bound<'py, PyAny>,
        run: &Bound<'py, PyAny>,
    ) -> PyResult<()> {
        let f = &self.funnels[fi];
        let start = self.runs.get_i64(run, RUN_START_MS)?;
        let deadline = start + f.window_ms;
        let key = self.runs.get(run, CELL)?.downcast_into::<PyTuple>()?;
        let stage = self.runs.get_i64(run, STAGE)?;
        let entered = self.runs.get_i64(run, STAGE_ENTERED_MS)?;
        let cell = t.cells.as_any().get_item(&key)?;
        bump(&cell.getattr(t.n_dropped)?, stage, 1)?;
        t.runs[fi].del_item(cid)?;
        let ts = deadline.into_py(py);
        let (seg, week) = (key.get_item(1)?, key.get_item(2)?);
        t.out.append(self.transition(py, fi, cid, stage, OUTSIDE, ts, Some(deadline - entered), seg, week)?)
    }
}

#[pymethods]
impl NativeFunnelStep {
    /// `funnels`: per compiled funnel `(name, stage names, window_ms, strict)`; `routes`:
    /// touchpoint -> [(funnel index, stage)] (the tracker's `_routes`, in its order).
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        funnels: Vec<FunnelSpec>,
        routes: &Bound<'_, PyDict>,
        transition_type: Py<PyAny>,
        run_type: Py<PyAny>,
        counts_empty: Py<PyAny>,
        array_type: Py<PyAny>,
        heappush: Py<PyAny>,
        heappop: Py<PyAny>,
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
            runs: Runs::new(run_type.bind(py)),
            counts_empty,
            array_type,
            heappush,
            heappop,
            cohort_week,
            exact_max,
            empty: PyString::new_bound(py, "").unbind(),
            slots: EventSlots::new(),
        })
    }

    /// `FunnelTracker.update`'s loop: `runs` and `deadlines` are the state's dict and heap of
    /// each funnel (in the funnels' order), `cells` the state's cells, `weeks` the tracker's
    /// day -> cohort week cache; transitions and late events are appended to `out` and `late`.
    /// `events` are `ResolvedEvent`s, or a `NativeReleased` batch of the chain's reorder buffer
    /// (its records are read instead of the events).
    #[allow(clippy::too_many_arguments)]
    fn update<'py>(
        &mut self,
        py: Python<'py>,
        events: &Bound<'py, PyAny>,
        runs: Vec<Bound<'py, PyDict>>,
        deadlines: Vec<Bound<'py, PyList>>,
        cells: &Bound<'py, PyDict>,
        weeks: &Bound<'py, PyDict>,
        watermark_ms: i64,
        out: &Bound<'py, PyList>,
        late: &Bound<'py, PyList>,
    ) -> PyResult<()> {
        let t = State::new(py, self.funnels.len(), runs, deadlines, cells, out)?;
        let route_of = self.route_of.bind(py);
        if let Ok(batch) = events.downcast::<NativeReleased>() {
            for r in &batch.borrow().recs {
                let ri = match route_of.get_item(r.tp.bound(py))? {
                    Some(i) => i.extract::<usize>()?,
                    None => continue,
                };
                let ts_obj = r.ts.into_py(py).into_bound(py);
                let (ev, cid, seg) = (r.ev.bound(py), r.cid.bound(py).into_any(), r.seg.bound(py));
                self.route_event(py, &t, ri, &ev, r.ts, &ts_obj, &cid, Some(seg), weeks, watermark_ms, late)?;
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
            let cid = self.slots.get(&ev, CUSTOMER_ID)?;
            self.route_event(py, &t, ri, &ev, ts, &ts_obj, &cid, None, weeks, watermark_ms, late)?;
        }
        Ok(())
    }

    /// `FunnelTracker.advance`'s loop, the watermark already checked and set by the caller:
    /// drop every run whose deadline is before `watermark_ms`, funnel by funnel.
    fn advance<'py>(
        &self,
        py: Python<'py>,
        watermark_ms: i64,
        runs: Vec<Bound<'py, PyDict>>,
        deadlines: Vec<Bound<'py, PyList>>,
        cells: &Bound<'py, PyDict>,
        out: &Bound<'py, PyList>,
    ) -> PyResult<()> {
        let t = State::new(py, self.funnels.len(), runs, deadlines, cells, out)?;
        let heappop = self.heappop.bind(py);
        for fi in 0..self.funnels.len() {
            let heap = &t.deadlines[fi];
            let fruns = &t.runs[fi];
            while !heap.is_empty() {
                let top: i64 = heap.get_item(0)?.downcast_into::<PyTuple>()?.get_item(0)?.extract()?;
                if top >= watermark_ms {
                    break;
                }
                let entry = heappop.call1((heap,))?.downcast_into::<PyTuple>()?;
                let cid = entry.get_item(1)?;
                let start: i64 = entry.get_item(2)?.extract()?;
                if let Some(run) = fruns.get_item(&cid)? {
                    let run_start = self.runs.get_i64(&run, RUN_START_MS)?;
                    if run_start == start {
                        self.drop_run(py, &t, fi, &cid, &run)?;
                    }
                }
            }
        }
        Ok(())
    }
}

impl NativeFunnelStep {
    /// `FunnelTracker._start`: a run of funnel `fi` starts at stage 0.
    #[allow(clippy::too_many_arguments)]
    fn start<'py>(
        &self,
        py: Python<'py>,
        t: &State<'py>,
        fi: usize,
        cid: &Bound<'py, PyAny>,
        segment: Bound<'py, PyAny>,
        ts: i64,
        weeks: &Bound<'py, PyDict>,
    ) -> PyResult<()> {
        let f = &self.funnels[fi];
        let day = ts.div_euclid(DAY_MS);
        let week = match weeks.get_item(day)? {
            Some(w) => w,
            None => {
                let w = self.cohort_week.bind(py).call1((ts,))?;
                weeks.set_item(day, &w)?;
                w
            }
        };
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
        let codes = self.array_type.bind(py).call1(("q", (ts << STAGE_BITS,)))?;
        let ts_obj = ts.into_py(py).into_bound(py);
        let run = self.runs.make(py, [0i64.into_py(py).into_bound(py), ts_obj.clone(), ts_obj, key.clone().into_any(), codes])?;
        t.runs[fi].set_item(cid, run)?;
        self.heappush.bind(py).call1((&t.deadlines[fi], (ts + f.window_ms, cid, ts)))?;
        t.out.append(self.transition(py, fi, cid, OUTSIDE, 0, ts.into_py(py), None, segment, week)?)
    }
}

impl NativeFunnelStep {
    /// One routed event of `update` (route `ri`): `segment` read from `ev` when not given.
    #[allow(clippy::too_many_arguments)]
    fn route_event<'py>(
        &self,
        py: Python<'py>,
        t: &State<'py>,
        ri: usize,
        ev: &Bound<'py, PyAny>,
        ts: i64,
        ts_obj: &Bound<'py, PyAny>,
        cid: &Bound<'py, PyAny>,
        segment: Option<Bound<'py, PyAny>>,
        weeks: &Bound<'py, PyDict>,
        watermark_ms: i64,
        late: &Bound<'py, PyList>,
    ) -> PyResult<()> {
        let n_append = intern!(py, "append");
        if ts < watermark_ms {
            late.append(ev)?;
            return Ok(());
        }
        for &(fi, s) in &self.routes[ri] {
            let f = &self.funnels[fi];
            let fruns = &t.runs[fi];
            let mut run = fruns.get_item(cid)?;
            let mut entered = 0i64;
            if let Some(r) = &run {
                entered = self.runs.get_i64(r, STAGE_ENTERED_MS)?;
                if ts < entered {
                    let n = late.len();
                    if n == 0 || !late.get_item(n - 1)?.is(ev) {
                        late.append(ev)?;
                    }
                    continue;
                }
                let start = self.runs.get_i64(r, RUN_START_MS)?;
                if ts > start + f.window_ms {
                    self.drop_run(py, t, fi, cid, r)?;
                    run = None;
                }
            }
            let run = match run {
                Some(r) => r,
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
            self.runs.get(&run, EVENTS)?.call_method1(n_append, (ts << STAGE_BITS | s,))?;
            let c = self.runs.get_i64(&run, STAGE)?;
            if s <= c || (f.strict && s != c + 1) {
                continue;
            }
            let spent = ts - entered;
            let key = self.runs.get(&run, CELL)?.downcast_into::<PyTuple>()?;
            let cell = t.cells.as_any().get_item(&key)?;
            bump(&cell.getattr(t.n_advanced)?, c, 1)?;
            let durations = cell.getattr(t.advance_ms)?.get_item(c)?;
            self.durations_add(py, &durations, spent)?;
            bump(&cell.getattr(t.n_entered)?, s, 1)?;
            let ts = ts_obj.clone().unbind();
            let (seg, week) = (key.get_item(1)?, key.get_item(2)?);
            t.out.append(self.transition(py, fi, cid, c, s, ts, Some(spent), seg, week)?)?;
            if s == f.last {
                fruns.del_item(cid)?;
            } else {
                self.runs.set(&run, STAGE, s.into_py(py).into_bound(py))?;
                self.runs.set(&run, STAGE_ENTERED_MS, ts_obj.clone())?;
            }
        }
        Ok(())
    }
}
