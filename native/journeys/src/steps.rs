//! The steps of one call of the journeys core, kept as Rust records (issue 4).
//!
//! `NativeJourneyCore.apply`, `expire` and `merge` return their steps as a `StepBatch`: the
//! records the walk made, with the Python strings of their codes. The transition counter
//! (`NativeStepCounter.update`, same crate) counts a batch straight from those records, and the
//! `Step` tuples are made only when someone reads the batch (`len`, iteration, indexing,
//! comparison, pickling: the same records, in the same order, as a list of `Step`s, made once).
//! Each step is counted into its pane's cells by the same dict operations in the same order as
//! from `Step` records, so the cells and every output are the same.

use std::collections::HashMap;
use std::sync::Arc;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::types::{PyDict, PyList, PyTuple};

use crate::panes::add_cell;
use crate::{FxMap, NativeJourneyCore, NativeStepCounter, PStr, RStep, EMPTY};

/// The Python strings of a core's codes (its interner's, a prefix of a list that only grows,
/// so a code means the same string in every table of a core) and the `Step` type.
pub(crate) struct StepTable {
    strs: Vec<PStr>,
    step_type: Py<PyAny>,
}

// SAFETY: the strings are only touched under the GIL (every method here holds it), as `PStr`.
unsafe impl Sync for StepTable {}

impl StepTable {
    /// A `Step` record, built as `tuple.__new__(Step, fields)` builds it.
    fn step_obj<'py>(&self, py: Python<'py>, st: &RStep) -> PyResult<Bound<'py, PyAny>> {
        let s = &self.strs;
        unsafe {
            let items: [*mut ffi::PyObject; 15] = [
                st.cid.new_ref(),
                s[st.seg as usize].new_ref(),
                s[st.ch as usize].new_ref(),
                s[st.tp as usize].new_ref(),
                s[st.src as usize].new_ref(),
                s[st.dst as usize].new_ref(),
                s[st.prev2 as usize].new_ref(),
                ffi::PyLong_FromLongLong(st.gap),
                ffi::PyLong_FromLongLong(st.ts),
                st.session.new_ref(),
                ffi::PyBool_FromLong(st.is_new as _),
                if st.tp != EMPTY && st.rev == 0.0 {
                    ffi::PyLong_FromLong(0)
                } else {
                    ffi::PyFloat_FromDouble(st.rev)
                },
                ffi::PyLong_FromLongLong(st.jno),
                ffi::PyLong_FromLongLong(st.sign),
                match &st.eid {
                    Some(e) => e.new_ref(),
                    None => s[EMPTY as usize].new_ref(),
                },
            ];
            let tp = self.step_type.as_ptr() as *mut ffi::PyTypeObject;
            let alloc = (*tp).tp_alloc.unwrap_or(ffi::PyType_GenericAlloc);
            let obj = alloc(tp, 15);
            if obj.is_null() {
                for p in items {
                    ffi::Py_XDECREF(p);
                }
                return Err(PyErr::fetch(py));
            }
            for (i, p) in items.into_iter().enumerate() {
                ffi::PyTuple_SET_ITEM(obj, i as ffi::Py_ssize_t, p);
            }
            // Strings and numbers only: no cycle can go through it, and the collector would
            // untrack it at its first pass anyway (as it does any such tuple); untracked now,
            // it is never walked.
            if ffi::PyObject_IS_GC(obj) != 0 {
                ffi::PyObject_GC_UnTrack(obj as *mut std::ffi::c_void);
            }
            Ok(Bound::from_owned_ptr(py, obj))
        }
    }

    /// A cell's key `(segment, channel, prev2, src, dst, gap bucket)`, as the counter makes it
    /// from a `Step` (the same string objects).
    fn cell_key<'py>(&self, py: Python<'py>, st: &RStep, bucket: i64) -> PyResult<Bound<'py, PyTuple>> {
        let s = &self.strs;
        unsafe {
            let b = ffi::PyLong_FromLongLong(bucket);
            if b.is_null() {
                return Err(PyErr::fetch(py));
            }
            let t = ffi::PyTuple_New(6);
            if t.is_null() {
                ffi::Py_DECREF(b);
                return Err(PyErr::fetch(py));
            }
            let items = [
                s[st.seg as usize].new_ref(),
                s[st.ch as usize].new_ref(),
                s[st.prev2 as usize].new_ref(),
                s[st.src as usize].new_ref(),
                s[st.dst as usize].new_ref(),
                b,
            ];
            for (i, p) in items.into_iter().enumerate() {
                ffi::PyTuple_SET_ITEM(t, i as ffi::Py_ssize_t, p);
            }
            Ok(Bound::from_owned_ptr(py, t).downcast_into_unchecked())
        }
    }
}

impl NativeJourneyCore {
    /// `steps` as a batch, with the table of the core's strings (made again only when the
    /// interner has grown since the last one).
    pub(crate) fn batch(&mut self, py: Python<'_>, steps: Vec<RStep>) -> StepBatch {
        let n = self.strs.py.len();
        let stale = match &self.table {
            Some(t) => t.strs.len() != n,
            None => true,
        };
        if stale {
            self.table = Some(Arc::new(StepTable {
                strs: self.strs.py.clone(),
                step_type: self.step_type.clone_ref(py),
            }));
        }
        StepBatch { steps, table: self.table.clone().unwrap(), list: None }
    }
}

/// The steps of one call (see the module doc): a read-only sequence of `Step` records.
#[pyclass(module = "journeymap_journeys")]
pub struct StepBatch {
    steps: Vec<RStep>,
    table: Arc<StepTable>,
    list: Option<Py<PyList>>, // the `Step` records, once read
}

impl StepBatch {
    fn records<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        if let Some(l) = &self.list {
            return Ok(l.bind(py).clone());
        }
        let l = PyList::empty_bound(py);
        for st in &self.steps {
            l.append(self.table.step_obj(py, st)?)?;
        }
        self.list = Some(l.clone().unbind());
        Ok(l)
    }

    /// Count every step into `counter`'s panes (`NativeStepCounter.update` over the records).
    pub(crate) fn count_into<'py>(
        &self,
        py: Python<'py>,
        counter: &NativeStepCounter,
        hot: &Bound<'py, PyDict>,
        frontier: Option<i64>,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        let mut keys = counter
            .keys
            .try_borrow_mut()
            .map_err(|_| PyRuntimeError::new_err("the step counter is already counting"))?;
        let mut cells = PaneCells::new(py, hot, counter.counts_type.bind(py), frontier);
        let s = &self.table.strs;
        for st in &self.steps {
            let bucket = counter.lows.partition_point(|&low| low <= st.gap) as i64 - 1;
            let id = (
                [st.seg, st.ch, st.prev2, st.src, st.dst].map(|c| s[c as usize].ptr() as usize),
                bucket,
            );
            let (key, hash) = match keys.map.get(&id) {
                Some((key, hash)) => (key.bind(py).clone(), *hash),
                None => {
                    let key = self.table.cell_key(py, st, bucket)?;
                    let hash = unsafe { ffi::PyObject_Hash(key.as_ptr()) };
                    if hash == -1 {
                        return Err(PyErr::fetch(py));
                    }
                    if keys.map.len() >= KEYS_KEPT {
                        keys.map.clear();
                    }
                    keys.map.insert(id, (key.clone().unbind(), hash));
                    (key, hash)
                }
            };
            cells.add_hashed(st.ts.div_euclid(counter.step_ms), &key, hash, st.sign, st.gap)?;
        }
        Ok(cells.late)
    }
}

#[pymethods]
impl StepBatch {
    fn __len__(&self) -> usize {
        self.steps.len()
    }

    fn __iter__<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(self.records(py)?.as_any().iter()?.into_any())
    }

    fn __getitem__<'py>(&mut self, py: Python<'py>, index: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        self.records(py)?.as_any().get_item(index)
    }

    fn __richcmp__<'py>(
        &mut self,
        py: Python<'py>,
        other: &Bound<'py, PyAny>,
        op: CompareOp,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mine = self.records(py)?;
        let other = match other.downcast::<StepBatch>() {
            Ok(b) => match b.try_borrow_mut() {
                Ok(mut o) => o.records(py)?.into_any(),
                Err(_) => mine.clone().into_any(), // itself
            },
            Err(_) => other.clone(),
        };
        mine.as_any().rich_compare(other, op)
    }

    fn __repr__(&mut self, py: Python<'_>) -> PyResult<String> {
        Ok(self.records(py)?.as_any().repr()?.to_str()?.to_owned())
    }

    /// The `Step` records as a list (made once; the same list every time).
    fn to_list<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.records(py)
    }

    /// Pickled as the list of its `Step` records (it unpickles as that list).
    fn __reduce__<'py>(&mut self, py: Python<'py>) -> PyResult<(Bound<'py, PyAny>, (Bound<'py, PyList>,))> {
        let list_type = py.get_type_bound::<PyList>().into_any();
        Ok((list_type, (self.records(py)?,)))
    }
}

/// At most this many cell keys are kept (a few MB; then they are made again).
const KEYS_KEPT: usize = 1 << 16;

/// Cell keys already made, with their hashes, by the string objects and gap bucket they hold:
/// a step's key is then a lookup, not a tuple made and hashed. The addresses are those of the
/// strings the key tuple holds (so alive, and not reused for another string while it is kept).
#[derive(Default)]
pub(crate) struct KeyCache {
    map: FxMap<([usize; 5], i64), (Py<PyTuple>, ffi::Py_hash_t)>,
}

/// The cells of the pane of each step in turn (`hot[p].cells`, made with `counts_type` when
/// missing, or a late pane's dict in `late` for `_correct`), each step added as
/// `TransitionCounter.update` adds it: the same dict operations, in the same order (the key
/// hashed once, a value tuple only its dict holds updated in place: `panes::add_cell`). A pane
/// is looked up once per call (nothing else changes `hot` meanwhile).
pub(crate) struct PaneCells<'py, 'a> {
    py: Python<'py>,
    hot: &'a Bound<'py, PyDict>,
    counts_type: &'a Bound<'py, PyAny>,
    frontier: Option<i64>,
    pub(crate) late: Option<Bound<'py, PyDict>>,
    last_p: Option<i64>,
    cells: Option<Bound<'py, PyDict>>,
    seen: HashMap<i64, Bound<'py, PyDict>>,
}

impl<'py, 'a> PaneCells<'py, 'a> {
    pub(crate) fn new(
        py: Python<'py>,
        hot: &'a Bound<'py, PyDict>,
        counts_type: &'a Bound<'py, PyAny>,
        frontier: Option<i64>,
    ) -> Self {
        PaneCells {
            py,
            hot,
            counts_type,
            frontier,
            late: None,
            last_p: None,
            cells: None,
            seen: HashMap::new(),
        }
    }

    /// The cells of pane `p`, as the Python loop finds or makes them.
    fn cells_of(&mut self, p: i64) -> PyResult<Bound<'py, PyDict>> {
        let py = self.py;
        if matches!(self.frontier, Some(f) if p < f) {
            let l = self.late.get_or_insert_with(|| PyDict::new_bound(py));
            return Ok(match l.get_item(p)? {
                Some(c) => c.downcast_into::<PyDict>()?,
                None => {
                    let c = PyDict::new_bound(py);
                    l.set_item(p, &c)?;
                    c
                }
            });
        }
        let pane = match self.hot.get_item(p)? {
            Some(pane) => pane,
            None => {
                let pane = self.counts_type.call0()?;
                self.hot.set_item(p, &pane)?;
                pane
            }
        };
        Ok(pane.getattr(intern!(py, "cells"))?.downcast_into::<PyDict>()?)
    }

    /// One step of pane `p`: its cell `key` by `sign`, its gap sum by `sign * gap`.
    pub(crate) fn add(&mut self, p: i64, key: Bound<'py, PyTuple>, sign: i64, gap: i64) -> PyResult<()> {
        let hash = unsafe { ffi::PyObject_Hash(key.as_ptr()) };
        if hash == -1 {
            return Err(PyErr::fetch(self.py));
        }
        self.add_hashed(p, &key, hash, sign, gap)
    }

    /// `add` with the key's hash known.
    pub(crate) fn add_hashed(
        &mut self,
        p: i64,
        key: &Bound<'py, PyTuple>,
        hash: ffi::Py_hash_t,
        sign: i64,
        gap: i64,
    ) -> PyResult<()> {
        let py = self.py;
        if self.last_p != Some(p) || self.cells.is_none() {
            let cells = match self.seen.get(&p) {
                Some(c) => c.clone(),
                None => {
                    let c = self.cells_of(p)?;
                    self.seen.insert(p, c.clone());
                    c
                }
            };
            self.last_p = Some(p);
            self.cells = Some(cells);
        }
        let c = match &self.cells {
            Some(c) => c,
            None => return Err(PyValueError::new_err("no pane")),
        };
        unsafe { add_cell(py, c.as_ptr(), key.as_ptr(), hash, sign, sign * gap) }
    }
}
