//! The steps of one call of the journeys core, kept as Rust records (issue 4).
//!
//! `NativeJourneyCore.apply`, `expire` and `merge` return their steps as a `StepBatch`: the
//! records the walk made, with the Python strings of their codes. The transition counter
//! (`NativeCounter.update`, `counter.rs`) counts a batch straight from those records, and the
//! `Step` tuples are made only when someone reads the batch (`len`, iteration, indexing,
//! comparison, pickling: the same records, in the same order, as a list of `Step`s, made once).

use std::sync::Arc;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::types::PyList;

use crate::{NativeJourneyCore, PStr, RStep, EMPTY};

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
    /// The records and the strings of their codes (`counter.rs` counts them as they are).
    pub(crate) fn parts(&self) -> (&[RStep], &[PStr]) {
        (&self.steps, &self.table.strs)
    }

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
