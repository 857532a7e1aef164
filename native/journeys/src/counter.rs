//! `TransitionCounter` (`processors/transitions.py`) over native state (issue 4).
//!
//! The Python counter keeps its panes, windows and totals as dicts of cells
//! `(segment, channel, prev2, src, dst, gap bucket) -> (n, gap_sum_ms)`. Here a cell is its
//! strings' codes (interned by content, so the same for steps of any core and for cells read
//! back from a pickle) and two `i64`s, and each dict is a `Cells`: the same cells in the same
//! insertion order as the Python dict, changed by the same operations in the same order (a cell
//! set again keeps its place, a removed one leaves, one added again goes last). Python objects
//! are made only where they leave: the cell rows of `advance`, the pickles of the archive (the
//! bytes `pickle.dumps` writes for the Python dict of the same cells) and the views of the state
//! (`get`: the Python counter's attributes, made on each read; `set` reads them back), which is
//! also what the counter pickles as, so either engine reads the other's checkpoints.

use std::collections::{BTreeSet, HashSet};
use std::hash::BuildHasherDefault;

use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PySet, PyString, PyTuple, PyType};

use crate::steps::StepBatch;
use crate::{Fx, FxMap, PStr};

type FxSet<T> = HashSet<T, BuildHasherDefault<Fx>>;
type Seen = FxMap<usize, (u32, PyObject)>;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Pane,
    Cells,
    Delta,
}

/// One cell's key: the codes of segment, channel, prev2, src, dst, and the gap bucket (-1 to
/// 49 from steps; a state read back with one beyond 32 bits is refused).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Cell {
    s: [u32; 5],
    b: i32,
}

/// `s[0]` of a removed cell's place in `Cells::entries` (no string gets this code).
const GONE: u32 = u32::MAX;

fn sum(a: i64, b: i64) -> PyResult<i64> {
    a.checked_add(b)
        .ok_or_else(|| PyOverflowError::new_err("a cell's count overflows 64 bits"))
}

fn product(a: i64, b: i64) -> PyResult<i64> {
    a.checked_mul(b)
        .ok_or_else(|| PyOverflowError::new_err("a cell's count overflows 64 bits"))
}

/// The cells of one Python dict, in its insertion order (40 bytes a cell, and its index).
#[derive(Clone, Default)]
struct Cells {
    ix: FxMap<Cell, u32>,
    entries: Vec<(Cell, i64, i64)>, // `s[0] == GONE`: removed
}

impl Cells {
    fn len(&self) -> usize {
        self.ix.len()
    }

    fn is_empty(&self) -> bool {
        self.ix.is_empty()
    }

    fn get(&self, c: &Cell) -> Option<(i64, i64)> {
        self.ix.get(c).map(|&i| {
            let e = &self.entries[i as usize];
            (e.1, e.2)
        })
    }

    /// `(cell, n, gap_sum)` in insertion order.
    fn iter(&self) -> impl Iterator<Item = (Cell, i64, i64)> + '_ {
        self.entries.iter().filter(|e| e.0.s[0] != GONE).copied()
    }

    fn clear(&mut self) {
        self.ix.clear();
        self.entries.clear();
    }

    /// Room for an eighth more cells, no more (a pane made final gets a few corrected cells
    /// now and then: no doubling for them).
    fn shrink(&mut self) {
        let room = self.entries.len() + self.entries.len() / 8;
        self.ix.shrink_to(room);
        self.entries.shrink_to(room);
    }

    fn push(&mut self, c: Cell, n: i64, g: i64) {
        let len = self.entries.len();
        if len == self.entries.capacity() && len >= 1024 {
            self.entries.reserve_exact(len / 8); // large ones grow by an eighth
        }
        self.ix.insert(c, len as u32);
        self.entries.push((c, n, g));
    }

    /// `cells[c] = (n, g)` in place when there, else last.
    fn set(&mut self, c: Cell, n: i64, g: i64) {
        match self.ix.get(&c) {
            Some(&i) => self.entries[i as usize] = (c, n, g),
            None => self.push(c, n, g),
        }
    }

    fn remove_at(&mut self, c: &Cell, i: usize) {
        self.ix.remove(c);
        self.entries[i].0.s[0] = GONE;
        if self.entries.len() > 64 && self.entries.len() > 2 * self.ix.len() {
            // drop the holes, keeping the order
            self.entries.retain(|e| e.0.s[0] != GONE);
            for (j, e) in self.entries.iter().enumerate() {
                *self.ix.get_mut(&e.0).unwrap() = j as u32;
            }
        }
    }

    /// `cells[c]` set to the sum with `(n, g)`, or removed when that is `(0, 0)`; a new cell is
    /// added when `new_always` or when `(n, g)` is not `(0, 0)`.
    fn add(&mut self, c: Cell, n: i64, g: i64, new_always: bool) -> PyResult<()> {
        match self.ix.get(&c) {
            None => {
                if new_always || n != 0 || g != 0 {
                    self.push(c, n, g);
                }
            }
            Some(&i) => {
                let e = &mut self.entries[i as usize];
                let (n, g) = (sum(e.1, n)?, sum(e.2, g)?);
                if n != 0 || g != 0 {
                    e.1 = n;
                    e.2 = g;
                } else {
                    self.remove_at(&c, i as usize);
                }
            }
        }
        Ok(())
    }

    /// `TransitionCounts.merge(other, sign)`.
    fn merge(&mut self, other: &Cells, sign: i64) -> PyResult<()> {
        for (c, n, g) in other.iter() {
            if sign == 1 {
                self.add(c, n, g, true)?; // `cells[key] = (n, gap_sum)` when new
            } else {
                self.add(c, product(sign, n)?, product(sign, g)?, false)?; // `_add_cell`
            }
        }
        Ok(())
    }
}

/// A Python dict keyed by pane index, in its insertion order.
struct Panes<V> {
    ix: FxMap<i64, usize>,
    entries: Vec<Option<(i64, V)>>,
}

impl<V> Default for Panes<V> {
    fn default() -> Self {
        Panes {
            ix: FxMap::default(),
            entries: Vec::new(),
        }
    }
}

impl<V> Panes<V> {
    fn is_empty(&self) -> bool {
        self.ix.is_empty()
    }

    fn contains(&self, p: i64) -> bool {
        self.ix.contains_key(&p)
    }

    fn get(&self, p: i64) -> Option<&V> {
        self.ix
            .get(&p)
            .map(|&i| &self.entries[i].as_ref().unwrap().1)
    }

    fn get_mut(&mut self, p: i64) -> Option<&mut V> {
        match self.ix.get(&p) {
            Some(&i) => Some(&mut self.entries[i].as_mut().unwrap().1),
            None => None,
        }
    }

    /// `d[p]`, set to `make()` first (last in order) when missing.
    fn get_or_insert_with(&mut self, p: i64, make: impl FnOnce() -> V) -> &mut V {
        let i = match self.ix.get(&p) {
            Some(&i) => i,
            None => {
                self.ix.insert(p, self.entries.len());
                self.entries.push(Some((p, make())));
                self.entries.len() - 1
            }
        };
        &mut self.entries[i].as_mut().unwrap().1
    }

    /// `d[p] = v`: in its place when there, else last.
    fn insert(&mut self, p: i64, v: V) {
        match self.ix.get(&p) {
            Some(&i) => self.entries[i] = Some((p, v)),
            None => {
                self.ix.insert(p, self.entries.len());
                self.entries.push(Some((p, v)));
            }
        }
    }

    /// `d.pop(p, None)`.
    fn pop(&mut self, p: i64) -> Option<V> {
        let i = self.ix.remove(&p)?;
        let v = self.entries[i].take().map(|e| e.1);
        if self.entries.len() > 64 && self.entries.len() > 2 * self.ix.len() {
            self.entries.retain(|e| e.is_some());
            for (j, e) in self.entries.iter().enumerate() {
                *self.ix.get_mut(&e.as_ref().unwrap().0).unwrap() = j;
            }
        }
        v
    }

    fn iter(&self) -> impl Iterator<Item = (i64, &V)> + '_ {
        self.entries.iter().flatten().map(|e| (e.0, &e.1))
    }

    fn clear(&mut self) {
        self.ix.clear();
        self.entries.clear();
    }
}

/// `TransitionCounter` over native cells (see the module doc). `processors/transitions_native.py`
/// wraps it as `NativeTransitionCounter`.
#[pyclass(module = "journeymap_journeys")]
pub struct NativeCounter {
    // the configuration and the types and functions it makes and calls
    step_ms: i64,
    step_s: PyObject,
    lateness_ms: i64,
    lows: Vec<i64>,
    mode: Mode,
    sizes: Vec<(i64, PyObject, i64)>, // (size_s, the same as a Python int, panes per window)
    max_panes: i64,
    counts_type: PyObject,
    row_type: Py<PyType>,
    update_type: Py<PyType>,
    delta_type: Py<PyType>,
    dumps: PyObject,
    loads: PyObject,
    protocol: i64,
    // the strings of the codes (the first object seen with each text) and their UTF-8 (lone
    // surrogates as "surrogatepass" writes them, as pickle does: code point order either way)
    strs: Vec<PStr>,
    texts: Vec<Box<[u8]>>,
    by_text: FxMap<Box<[u8]>, u32>,
    // a core's code -> (its string, our code), for the steps of a `StepBatch`
    core_codes: Vec<Option<(PStr, u32)>>,
    // the state: `TransitionCounter`'s attributes of the same names
    frontier: Option<i64>,
    kept_from: Option<i64>,
    hot: Panes<Cells>,
    panes: Panes<Cells>,
    windows: Vec<Cells>,
    synced: Vec<Option<i64>>,
    totals: Cells,
    dirty: BTreeSet<i64>,
    archive: Py<PyDict>,
    thawed: Panes<Cells>,
    deltas: Panes<Cells>,
    changed: Panes<FxSet<Cell>>,
}

/// A new reference or the error Python set.
fn owned(py: Python<'_>, p: *mut ffi::PyObject) -> PyResult<*mut ffi::PyObject> {
    if p.is_null() {
        Err(PyErr::fetch(py))
    } else {
        Ok(p)
    }
}

fn opt_int(o: &Bound<'_, PyAny>) -> PyResult<Option<i64>> {
    if o.is_none() {
        Ok(None)
    } else {
        Ok(Some(o.extract()?))
    }
}

impl NativeCounter {
    /// The code of a string, by its text.
    fn code(&mut self, s: &Bound<'_, PyString>) -> PyResult<u32> {
        let py = s.py();
        let mut size: ffi::Py_ssize_t = 0;
        let data = unsafe { ffi::PyUnicode_AsUTF8AndSize(s.as_ptr(), &mut size) };
        let encoded;
        let text: &[u8] = if data.is_null() {
            // lone surrogates: pickle's bytes for them
            unsafe { ffi::PyErr_Clear() };
            encoded = unsafe {
                Bound::from_owned_ptr_or_err(
                    py,
                    ffi::PyUnicode_AsEncodedString(
                        s.as_ptr(),
                        "utf-8\0".as_ptr() as *const std::os::raw::c_char,
                        "surrogatepass\0".as_ptr() as *const std::os::raw::c_char,
                    ),
                )?
            };
            encoded.downcast::<PyBytes>()?.as_bytes()
        } else {
            unsafe { std::slice::from_raw_parts(data as *const u8, size as usize) }
        };
        if let Some(&c) = self.by_text.get(text) {
            return Ok(c);
        }
        if self.strs.len() >= GONE as usize {
            return Err(PyOverflowError::new_err(
                "more than 2**32 - 1 strings in cells",
            ));
        }
        let c = self.strs.len() as u32;
        self.by_text.insert(text.into(), c);
        self.texts.push(text.into());
        self.strs.push(PStr::of(s));
        Ok(c)
    }

    /// The code of a string object, through `seen` (by address, for one call: it holds the
    /// objects, so an address stays theirs).
    fn code_seen(&mut self, seen: &mut Seen, s: &Bound<'_, PyAny>) -> PyResult<u32> {
        let at = s.as_ptr() as usize;
        if let Some((c, _)) = seen.get(&at) {
            return Ok(*c);
        }
        let c = self.code(s.downcast::<PyString>()?)?;
        seen.insert(at, (c, s.clone().unbind()));
        Ok(c)
    }

    /// Our code of a core's code `c` (its string `s`).
    fn core_code(&mut self, py: Python<'_>, c: u32, s: &PStr) -> PyResult<u32> {
        let i = c as usize;
        if let Some(Some((held, ours))) = self.core_codes.get(i) {
            // `held` keeps its object alive: the same address is the same string
            if held.ptr() == s.ptr() {
                return Ok(*ours);
            }
        }
        let ours = self.code(&s.bound(py))?;
        if self.core_codes.len() <= i {
            self.core_codes.resize_with(i + 1, || None);
        }
        self.core_codes[i] = Some((s.clone(), ours));
        Ok(ours)
    }

    fn bucket(&self, gap: i64) -> i32 {
        self.lows.partition_point(|&low| low <= gap) as i32 - 1
    }

    /// The cell key `(segment, channel, prev2, src, dst, gap bucket)` as a new tuple.
    fn key_obj(&self, py: Python<'_>, c: &Cell) -> PyResult<*mut ffi::PyObject> {
        unsafe {
            let b = owned(py, ffi::PyLong_FromLong(c.b as _))?;
            let t = ffi::PyTuple_New(6);
            if t.is_null() {
                ffi::Py_DECREF(b);
                return Err(PyErr::fetch(py));
            }
            for (i, &code) in c.s.iter().enumerate() {
                ffi::PyTuple_SET_ITEM(t, i as ffi::Py_ssize_t, self.strs[code as usize].new_ref());
            }
            ffi::PyTuple_SET_ITEM(t, 5, b);
            Ok(t)
        }
    }

    /// The cells as the Python dict `{key: (n, gap_sum_ms)}`, in their order.
    fn cells_dict<'py>(&self, py: Python<'py>, cells: &Cells) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new_bound(py);
        for (c, n, g) in cells.iter() {
            unsafe {
                let key = Bound::from_owned_ptr(py, self.key_obj(py, &c)?);
                d.set_item(key, (n, g))?;
            }
        }
        Ok(d)
    }

    fn counts_obj<'py>(&self, py: Python<'py>, cells: &Cells) -> PyResult<Bound<'py, PyAny>> {
        self.counts_type
            .bind(py)
            .call1((self.cells_dict(py, cells)?,))
    }

    /// The cells of a Python dict `{key: (n, gap_sum_ms)}`, in its order.
    fn cells_from(&mut self, d: &Bound<'_, PyAny>) -> PyResult<Cells> {
        let d = d.downcast::<PyDict>()?;
        let mut seen = Seen::default();
        let mut cells = Cells::default();
        for (key, value) in d.iter() {
            let (n, g): (i64, i64) = value.extract()?;
            cells.push(self.cell_of(&mut seen, &key)?, n, g);
        }
        Ok(cells)
    }

    /// The cell of a key tuple `(segment, channel, prev2, src, dst, gap bucket)`.
    fn cell_of(&mut self, seen: &mut Seen, key: &Bound<'_, PyAny>) -> PyResult<Cell> {
        let bad = || {
            PyTypeError::new_err(
                "a cell's key is a tuple (segment, channel, prev2, src, dst, gap bucket)",
            )
        };
        let key = key.downcast::<PyTuple>().map_err(|_| bad())?;
        if key.len() != 6 {
            return Err(bad());
        }
        let mut s = [0u32; 5];
        for (i, code) in s.iter_mut().enumerate() {
            *code = self.code_seen(seen, &key.get_item(i)?)?;
        }
        Ok(Cell {
            s,
            b: key.get_item(5)?.extract()?,
        })
    }

    /// The `cells` of a `TransitionCounts`.
    fn cells_of(&mut self, counts: &Bound<'_, PyAny>) -> PyResult<Cells> {
        let py = counts.py();
        self.cells_from(&counts.getattr(intern!(py, "cells"))?)
    }

    fn panes_obj<'py>(
        &self,
        py: Python<'py>,
        panes: &Panes<Cells>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new_bound(py);
        for (p, cells) in panes.iter() {
            d.set_item(p, self.counts_obj(py, cells)?)?;
        }
        Ok(d)
    }

    fn panes_from(&mut self, d: &Bound<'_, PyAny>, counts: bool) -> PyResult<Panes<Cells>> {
        let mut panes = Panes::default();
        for (p, v) in d.downcast::<PyDict>()?.iter() {
            let cells = if counts {
                self.cells_of(&v)?
            } else {
                self.cells_from(&v)?
            };
            panes.insert(p.extract()?, cells);
        }
        Ok(panes)
    }

    /// The index of a window size in `sizes`.
    fn size_at(&self, size: &Bound<'_, PyAny>) -> PyResult<usize> {
        let size: i64 = size.extract()?;
        self.sizes
            .iter()
            .position(|s| s.0 == size)
            .ok_or_else(|| PyValueError::new_err("no such window size"))
    }

    /// `prefix + key + (n, gap_sum)` as a new record of the tuple subtype `row_type`.
    #[allow(clippy::too_many_arguments)]
    fn push_row(
        &self,
        py: Python<'_>,
        rows: &Bound<'_, PyList>,
        row_type: &Bound<'_, PyType>,
        start: &Bound<'_, PyAny>,
        c: &Cell,
        n: i64,
        g: i64,
    ) -> PyResult<()> {
        unsafe {
            let tp = row_type.as_type_ptr();
            // `tuple.__new__(row_type, items)` allocates the same way (tuple_subtype_new)
            let alloc = (*tp).tp_alloc.unwrap_or(ffi::PyType_GenericAlloc);
            let row = owned(py, alloc(tp, 10))?;
            let ints = [
                ffi::PyLong_FromLong(c.b as _),
                ffi::PyLong_FromLongLong(n),
                ffi::PyLong_FromLongLong(g),
            ];
            if ints.iter().any(|o| o.is_null()) {
                for o in ints {
                    ffi::Py_XDECREF(o);
                }
                ffi::Py_DECREF(row);
                return Err(PyErr::fetch(py));
            }
            ffi::Py_INCREF(start.as_ptr());
            ffi::PyTuple_SET_ITEM(row, 0, start.as_ptr());
            ffi::PyTuple_SET_ITEM(row, 1, self.step_s.clone_ref(py).into_ptr());
            for (i, &code) in c.s.iter().enumerate() {
                ffi::PyTuple_SET_ITEM(
                    row,
                    2 + i as ffi::Py_ssize_t,
                    self.strs[code as usize].new_ref(),
                );
            }
            ffi::PyTuple_SET_ITEM(row, 7, ints[0]);
            ffi::PyTuple_SET_ITEM(row, 8, ints[1]);
            ffi::PyTuple_SET_ITEM(row, 9, ints[2]);
            let rc = ffi::PyList_Append(rows.as_ptr(), row);
            ffi::Py_DECREF(row);
            if rc < 0 {
                return Err(PyErr::fetch(py));
            }
        }
        Ok(())
    }

    /// `TransitionCounts.cell_rows` of `cells`, appended to `rows`.
    fn rows_of(
        &self,
        py: Python<'_>,
        rows: &Bound<'_, PyList>,
        row_type: &Bound<'_, PyType>,
        cells: &Cells,
        start_ms: i64,
    ) -> PyResult<()> {
        let start = start_ms.into_py(py).into_bound(py);
        for (c, n, g) in cells.iter() {
            self.push_row(py, rows, row_type, &start, &c, n, g)?;
        }
        Ok(())
    }

    /// `pickle.dumps(cells_dict, protocol)` of the Python dict of `cells` (its strings one
    /// object per text), byte for byte what `_pickle` writes , or
    /// None where that needs more than one frame or a str is over 255 bytes.
    fn pickle(&self, cells: &Cells) -> Option<Vec<u8>> {
        if !(4..=5).contains(&self.protocol) {
            return None;
        }
        let mut out = Vec::with_capacity(64 + 40 * cells.len());
        // a string's memo index by its code (u32::MAX: not written yet)
        let mut memo: Vec<u32> = vec![u32::MAX; self.strs.len()];
        let mut n_memo: u32 = 0;
        out.extend_from_slice(&[0x80, self.protocol as u8]); // PROTO
        out.extend_from_slice(&[0x95, 0, 0, 0, 0, 0, 0, 0, 0]); // FRAME, its length set at the end
        out.push(b'}'); // EMPTY_DICT
        out.push(0x94); // MEMOIZE
        n_memo += 1;
        let mut save = |out: &mut Vec<u8>, c: &Cell, n: i64, g: i64| -> Option<()> {
            out.push(b'('); // MARK
            for &code in c.s.iter() {
                match memo[code as usize] {
                    u32::MAX => {}
                    i => {
                        if i < 256 {
                            out.extend_from_slice(&[b'h', i as u8]); // BINGET
                        } else {
                            out.push(b'j'); // LONG_BINGET
                            out.extend_from_slice(&i.to_le_bytes());
                        }
                        continue;
                    }
                }
                let text = &self.texts[code as usize];
                if text.len() > 0xff {
                    return None;
                }
                out.extend_from_slice(&[0x8c, text.len() as u8]); // SHORT_BINUNICODE
                out.extend_from_slice(text);
                out.push(0x94); // MEMOIZE
                memo[code as usize] = n_memo;
                n_memo += 1;
            }
            pickle_int(out, c.b as i64);
            out.push(b't'); // TUPLE
            out.push(0x94); // MEMOIZE
            pickle_int(out, n);
            pickle_int(out, g);
            out.push(0x86); // TUPLE2
            out.push(0x94); // MEMOIZE
            n_memo += 2;
            Some(())
        };
        let n = cells.len();
        let mut it = cells.iter();
        if n == 1 {
            let (c, a, b) = it.next()?;
            save(&mut out, &c, a, b)?;
            out.push(b's'); // SETITEM
        } else if n > 1 {
            loop {
                out.push(b'('); // MARK
                let mut i = 0;
                for (c, a, b) in it.by_ref() {
                    save(&mut out, &c, a, b)?;
                    i += 1;
                    if i == 1000 {
                        break;
                    }
                }
                out.push(b'u'); // SETITEMS
                if i != 1000 {
                    break;
                }
            }
        }
        out.push(b'.'); // STOP
        let frame_len = out.len() - 11;
        if frame_len >= 65536 {
            return None;
        }
        if frame_len < 4 {
            out.drain(2..11);
        } else {
            out[3..11].copy_from_slice(&(frame_len as u64).to_le_bytes());
        }
        Some(out)
    }

    /// `pickle.dumps(cells_dict, protocol)` of the Python dict of `cells`.
    fn pickled<'py>(&self, py: Python<'py>, cells: &Cells) -> PyResult<Bound<'py, PyAny>> {
        Ok(match self.pickle(cells) {
            Some(bytes) => PyBytes::new_bound(py, &bytes).into_any(),
            None => self
                .dumps
                .bind(py)
                .call1((self.cells_dict(py, cells)?, self.protocol))?,
        })
    }

    /// `_freeze`: the pane's cells pickled into the archive (or its entry dropped if empty).
    fn freeze(&self, py: Python<'_>, p: i64, cells: &Cells) -> PyResult<()> {
        let archive = self.archive.bind(py);
        if cells.is_empty() {
            if archive.contains(p)? {
                archive.del_item(p)?;
            }
            return Ok(());
        }
        archive.set_item(p, self.pickled(py, cells)?)
    }

    /// `archive.pop(p, None)`, unpickled (an empty pane when missing).
    fn thaw(&mut self, py: Python<'_>, p: i64) -> PyResult<Cells> {
        let archive = self.archive.bind(py).clone();
        match archive.get_item(p)? {
            Some(frozen) => {
                archive.del_item(p)?;
                self.unpickle(py, &frozen)
            }
            None => Ok(Cells::default()),
        }
    }

    /// The cells of `pickle.loads(frozen)` (an archived pane): read here when it holds only
    /// what cell dicts pickle to (see `read_cells`), else by `pickle.loads`.
    fn unpickle(&mut self, py: Python<'_>, frozen: &Bound<'_, PyAny>) -> PyResult<Cells> {
        if let Ok(b) = frozen.downcast::<PyBytes>() {
            if let Some(cells) = self.read_cells(py, b.as_bytes())? {
                return Ok(cells);
            }
        }
        let d = self.loads.bind(py).call1((frozen,))?;
        self.cells_from(&d)
    }

    /// The cell dict of a pickle as `_pickle` writes one (protocol 2 to 5: a dict of 6-tuples
    /// of five str and an int, to 2-tuples of ints; strs and tuples memoized, BINGET of them),
    /// read into cells without making its Python objects; None for anything else (another
    /// opcode, type or shape, an int beyond 64 bits, bytes that do not decode), which
    /// `pickle.loads` then reads or refuses.
    fn read_cells(&mut self, py: Python<'_>, data: &[u8]) -> PyResult<Option<Cells>> {
        #[derive(Clone, Copy)]
        enum It {
            Mark,
            Dict,
            Str(u32),
            Int(i64),
            Key(Cell),
            Val(i64, i64),
        }
        let mut stack: Vec<It> = Vec::with_capacity(16);
        let mut memo: Vec<It> = Vec::new();
        let mut cells = Cells::default();
        let mut at = 0usize;
        let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
            let b = data.get(*at..at.checked_add(n)?)?;
            *at += n;
            Some(b)
        };
        let uint = |b: &[u8]| b.iter().rev().fold(0u64, |v, &x| (v << 8) | x as u64);
        // the items above the topmost mark, which goes
        fn to_mark(stack: &mut Vec<It>) -> Option<Vec<It>> {
            let m = stack.iter().rposition(|it| matches!(it, It::Mark))?;
            let items = stack.split_off(m + 1);
            stack.pop();
            Some(items)
        }
        fn set(cells: &mut Cells, key: It, value: It) -> Option<()> {
            match (key, value) {
                (It::Key(c), It::Val(n, g)) => {
                    cells.set(c, n, g); // `d[key] = value`
                    Some(())
                }
                _ => None,
            }
        }
        macro_rules! tryo {
            ($e:expr) => {
                match $e {
                    Some(v) => v,
                    None => return Ok(None),
                }
            };
        }
        loop {
            let op = *tryo!(take(&mut at, 1)).first().unwrap();
            match op {
                0x80 => {
                    tryo!(take(&mut at, 1)); // PROTO
                }
                0x95 => {
                    tryo!(take(&mut at, 8)); // FRAME
                }
                b'}' => stack.push(It::Dict),
                0x94 => memo.push(*tryo!(stack.last())), // MEMOIZE
                b'(' => stack.push(It::Mark),
                0x8c | b'X' | 0x8d => {
                    // SHORT_BINUNICODE, BINUNICODE, BINUNICODE8
                    let width = match op {
                        0x8c => 1,
                        b'X' => 4,
                        _ => 8,
                    };
                    let n = uint(tryo!(take(&mut at, width)));
                    let text = tryo!(take(&mut at, tryo!(usize::try_from(n).ok())));
                    let code = match self.by_text.get(text) {
                        Some(&c) => c,
                        None => {
                            let s = unsafe {
                                ffi::PyUnicode_DecodeUTF8(
                                    text.as_ptr() as *const std::os::raw::c_char,
                                    text.len() as ffi::Py_ssize_t,
                                    "surrogatepass\0".as_ptr() as *const std::os::raw::c_char,
                                )
                            };
                            if s.is_null() {
                                unsafe { ffi::PyErr_Clear() };
                                return Ok(None);
                            }
                            let s = unsafe { Bound::from_owned_ptr(py, s) };
                            self.code(s.downcast::<PyString>()?)?
                        }
                    };
                    stack.push(It::Str(code));
                }
                b'h' | b'j' => {
                    // BINGET, LONG_BINGET
                    let i = uint(tryo!(take(&mut at, if op == b'h' { 1 } else { 4 })));
                    stack.push(*tryo!(memo.get(i as usize)));
                }
                b'K' => stack.push(It::Int(uint(tryo!(take(&mut at, 1))) as i64)),
                b'M' => stack.push(It::Int(uint(tryo!(take(&mut at, 2))) as i64)),
                b'J' => stack.push(It::Int(uint(tryo!(take(&mut at, 4))) as u32 as i32 as i64)),
                0x8a => {
                    // LONG1: little-endian two's complement
                    let n = *tryo!(take(&mut at, 1)).first().unwrap() as usize;
                    let b = tryo!(take(&mut at, n));
                    if n > 8 {
                        return Ok(None);
                    }
                    let mut v = uint(b) as i64;
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    stack.push(It::Int(v));
                }
                b't' | 0x86 => {
                    // TUPLE, TUPLE2
                    let items = if op == b't' {
                        tryo!(to_mark(&mut stack))
                    } else {
                        let n = stack.len();
                        if n < 2 {
                            return Ok(None);
                        }
                        stack.split_off(n - 2)
                    };
                    let it = match items[..] {
                        [It::Int(n), It::Int(g)] => It::Val(n, g),
                        [It::Str(a), It::Str(b), It::Str(c), It::Str(d), It::Str(e), It::Int(k)] => {
                            It::Key(Cell {
                                s: [a, b, c, d, e],
                                b: tryo!(i32::try_from(k).ok()),
                            })
                        }
                        _ => return Ok(None),
                    };
                    stack.push(it);
                }
                b's' => {
                    // SETITEM
                    let value = tryo!(stack.pop());
                    let key = tryo!(stack.pop());
                    if !matches!(stack.last(), Some(It::Dict)) {
                        return Ok(None);
                    }
                    tryo!(set(&mut cells, key, value));
                }
                b'u' => {
                    // SETITEMS
                    let items = tryo!(to_mark(&mut stack));
                    if items.len() % 2 != 0 || !matches!(stack.last(), Some(It::Dict)) {
                        return Ok(None);
                    }
                    for kv in items.chunks(2) {
                        tryo!(set(&mut cells, kv[0], kv[1]));
                    }
                }
                b'.' => {
                    // STOP
                    return Ok(match stack[..] {
                        [It::Dict] if at == data.len() => Some(cells),
                        _ => None,
                    });
                }
                _ => return Ok(None),
            }
        }
    }

    /// `TransitionCounter._correct(p, cells)`.
    fn correct(&mut self, py: Python<'_>, p: i64, cells: &Cells) -> PyResult<()> {
        let frontier = self
            .frontier
            .ok_or_else(|| PyValueError::new_err("a late pane before any pane is final"))?;
        let mut delta = Cells::default();
        for (c, n, g) in cells.iter() {
            if n != 0 || g != 0 {
                delta.push(c, n, g);
            }
        }
        if delta.is_empty() {
            return Ok(()); // e.g. a merge moved steps between customers: the cells are unchanged
        }
        self.totals.merge(&delta, 1)?;
        if self.mode == Mode::Delta {
            // emitted for any pane, kept or not
            match self.deltas.get_mut(p) {
                None => self.deltas.insert(p, delta.clone()),
                Some(pending) => {
                    for (c, n, g) in delta.iter() {
                        pending.add(c, n, g, false)?;
                    }
                }
            }
        }
        if self.mode == Mode::Cells {
            let keys = self.changed.get_or_insert_with(p, FxSet::default);
            keys.extend(delta.iter().map(|e| e.0));
        }
        if p < frontier - self.max_panes {
            if self.mode != Mode::Delta {
                // re-publish the archived pane (or its cells)
                if !self.thawed.contains(p) {
                    let cells = self.thaw(py, p)?;
                    self.thawed.insert(p, cells);
                }
                self.thawed.get_mut(p).unwrap().merge(&delta, 1)?;
                self.dirty.insert(p);
            }
            return Ok(());
        }
        self.panes
            .get_or_insert_with(p, Cells::default)
            .merge(&delta, 1)?;
        if self.mode != Mode::Delta {
            self.dirty.insert(p);
        }
        for (i, &(_, _, n)) in self.sizes.iter().enumerate() {
            if let Some(at) = self.synced[i] {
                if at - n <= p && p < at {
                    self.windows[i].merge(&delta, 1)?;
                }
            }
        }
        Ok(())
    }

    /// The step `(p, cell, sign, gap)` counted into its pane (`hot[p]`, or `late[p]` behind
    /// `frontier`) as `TransitionCounter.update` counts it.
    fn count(
        &mut self,
        late: &mut Panes<Cells>,
        frontier: Option<i64>,
        ts: i64,
        c: Cell,
        sign: i64,
        gap: i64,
    ) -> PyResult<()> {
        let p = ts.div_euclid(self.step_ms);
        let cells = match frontier {
            Some(f) if p < f => late.get_or_insert_with(p, Cells::default),
            _ => self.hot.get_or_insert_with(p, Cells::default),
        };
        cells.add(c, sign, product(sign, gap)?, true)
    }

    /// `sorted(keys)` as Python sorts the key tuples: by the strings' texts, then the bucket.
    fn sorted(&self, keys: &FxSet<Cell>) -> Vec<Cell> {
        let mut v: Vec<Cell> = keys.iter().copied().collect();
        v.sort_by(|a, b| {
            for i in 0..5 {
                let o = self.texts[a.s[i] as usize].cmp(&self.texts[b.s[i] as usize]);
                if o != std::cmp::Ordering::Equal {
                    return o;
                }
            }
            a.b.cmp(&b.b)
        });
        v
    }
}

#[pymethods]
impl NativeCounter {
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        step_s: i64,
        sizes: Vec<(i64, i64)>,
        lateness_ms: i64,
        corrections: &str,
        lows: Vec<i64>,
        counts_type: PyObject,
        row_types: (Bound<'_, PyType>, Bound<'_, PyType>, Bound<'_, PyType>),
        pickle_fns: (PyObject, PyObject, i64),
    ) -> PyResult<Self> {
        let mode = match corrections {
            "pane" => Mode::Pane,
            "cells" => Mode::Cells,
            "delta" => Mode::Delta,
            other => {
                return Err(PyValueError::new_err(format!(
                    "corrections must be 'pane', 'cells' or 'delta', got {:?}",
                    other
                )))
            }
        };
        if step_s <= 0 {
            return Err(PyValueError::new_err("step_s must be positive"));
        }
        for t in [&row_types.0, &row_types.1, &row_types.2] {
            if !t.is_subclass_of::<PyTuple>()? {
                return Err(PyTypeError::new_err("the row types are tuple subtypes"));
            }
        }
        let max_panes = sizes.iter().map(|s| s.1).max().unwrap_or(0);
        Ok(NativeCounter {
            step_ms: product(step_s, 1000)?,
            step_s: step_s.into_py(py),
            lateness_ms,
            lows,
            mode,
            windows: sizes.iter().map(|_| Cells::default()).collect(),
            synced: sizes.iter().map(|_| None).collect(),
            sizes: sizes
                .into_iter()
                .map(|(s, n)| (s, s.into_py(py), n))
                .collect(),
            max_panes,
            counts_type,
            row_type: row_types.0.unbind(),
            update_type: row_types.1.unbind(),
            delta_type: row_types.2.unbind(),
            dumps: pickle_fns.0,
            loads: pickle_fns.1,
            protocol: pickle_fns.2,
            strs: Vec::new(),
            texts: Vec::new(),
            by_text: FxMap::default(),
            core_codes: Vec::new(),
            frontier: None,
            kept_from: None,
            hot: Panes::default(),
            panes: Panes::default(),
            totals: Cells::default(),
            dirty: BTreeSet::new(),
            archive: PyDict::new_bound(py).unbind(),
            thawed: Panes::default(),
            deltas: Panes::default(),
            changed: Panes::default(),
        })
    }

    /// `TransitionCounter.update(steps)`: `Step` records, or a core's `StepBatch` (counted from
    /// its Rust records).
    fn update(&mut self, py: Python<'_>, steps: &Bound<'_, PyAny>) -> PyResult<()> {
        let frontier = self.frontier;
        let mut late: Panes<Cells> = Panes::default();
        if let Ok(batch) = steps.downcast::<StepBatch>() {
            let batch = batch.borrow();
            let (records, strs) = batch.parts();
            for st in records {
                let mut s = [0u32; 5];
                for (code, &theirs) in s
                    .iter_mut()
                    .zip([st.seg, st.ch, st.prev2, st.src, st.dst].iter())
                {
                    *code = self.core_code(py, theirs, &strs[theirs as usize])?;
                }
                let c = Cell {
                    s,
                    b: self.bucket(st.gap),
                };
                self.count(&mut late, frontier, st.ts, c, st.sign, st.gap)?;
            }
        } else {
            let mut seen = Seen::default();
            for st in steps.iter()? {
                let st = st?;
                let st = st.downcast::<PyTuple>()?;
                if st.len() != 15 {
                    return Err(PyValueError::new_err("a Step has 15 fields"));
                }
                let item = |i: usize| unsafe { st.get_item_unchecked(i) };
                let gap: i64 = item(7).extract()?;
                let ts: i64 = item(8).extract()?;
                let sign: i64 = item(13).extract()?;
                let mut s = [0u32; 5];
                for (code, i) in s.iter_mut().zip([1usize, 2, 6, 4, 5].iter()) {
                    *code = self.code_seen(&mut seen, &item(*i))?;
                }
                let c = Cell {
                    s,
                    b: self.bucket(gap),
                };
                self.count(&mut late, frontier, ts, c, sign, gap)?;
            }
        }
        for (p, cells) in late.iter() {
            self.correct(py, p, cells)?;
        }
        Ok(())
    }

    /// The archive's pickle of a cell dict (`pickle.dumps` of it with one object per text).
    fn dumps<'py>(
        &mut self,
        py: Python<'py>,
        cells: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let cells = self.cells_from(cells)?;
        self.pickled(py, &cells)
    }

    /// `pickle.loads(frozen)` of an archived pane, as `_correct` reads it (a new dict).
    fn loads<'py>(
        &mut self,
        py: Python<'py>,
        frozen: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let cells = self.unpickle(py, frozen)?;
        self.cells_dict(py, &cells)
    }

    /// `TransitionCounter._correct(p, cells)` with the cells of a Python dict.
    fn correct_cells(&mut self, py: Python<'_>, p: i64, cells: &Bound<'_, PyAny>) -> PyResult<()> {
        let cells = self.cells_from(cells)?;
        self.correct(py, p, &cells)
    }

    /// `TransitionCounter.advance(watermark_ms)` without `on_window`: the rows.
    fn advance<'py>(&mut self, py: Python<'py>, watermark_ms: i64) -> PyResult<Bound<'py, PyList>> {
        let new_frontier = (watermark_ms - self.lateness_ms).div_euclid(self.step_ms);
        let rows = PyList::empty_bound(py);
        let mut frontier = match self.frontier {
            Some(f) => f,
            None => {
                let mut f = new_frontier;
                for (p, _) in self.hot.iter() {
                    f = f.min(p);
                }
                self.frontier = Some(f);
                self.kept_from = Some(f);
                for at in self.synced.iter_mut() {
                    *at = Some(f);
                }
                f
            }
        };
        let row_type = self.row_type.bind(py).clone();
        let dirty: Vec<i64> = self.dirty.iter().copied().collect();
        for p in dirty {
            let thawed = if self.panes.contains(p) {
                None
            } else {
                match self.thawed.pop(p) {
                    Some(cells) => Some(cells),
                    None => continue,
                }
            };
            // (`changed.pop(p, ())` below in Python: taken first, for the borrow of the pane)
            let keys = if self.mode == Mode::Cells {
                self.changed.pop(p)
            } else {
                None
            };
            let pane = match &thawed {
                Some(cells) => cells,
                None => self.panes.get(p).unwrap(),
            };
            if p < frontier - self.max_panes {
                self.freeze(py, p, pane)?; // archived: keep the new value
            }
            let start = product(p, self.step_ms)?;
            if self.mode == Mode::Cells {
                if let Some(keys) = keys {
                    let start = start.into_py(py).into_bound(py);
                    let update_type = self.update_type.bind(py).clone();
                    for c in self.sorted(&keys) {
                        let (n, g) = pane.get(&c).unwrap_or((0, 0));
                        self.push_row(py, &rows, &update_type, &start, &c, n, g)?;
                    }
                }
                continue;
            }
            let before = rows.len();
            self.rows_of(py, &rows, &row_type, pane, start)?;
            if rows.len() == before {
                // A correction can empty a pane; one zero row still carries its new version,
                // so a sink keeping the latest emission of each pane drops the old cells.
                let empty =
                    row_type.call1((start, self.step_s.bind(py), "", "", "", "", "", 0, 0, 0))?;
                rows.append(empty)?;
            }
        }
        self.dirty.clear();
        if !self.deltas.is_empty() {
            let delta_type = self.delta_type.bind(py).clone();
            let mut ps: Vec<i64> = self.deltas.iter().map(|e| e.0).collect();
            ps.sort_unstable();
            for p in ps {
                let start = product(p, self.step_ms)?;
                self.rows_of(py, &rows, &delta_type, self.deltas.get(p).unwrap(), start)?;
            }
            self.deltas.clear();
        }
        let mut kept_from = self.kept_from;
        while frontier < new_frontier {
            let f = frontier;
            if self.panes.is_empty() {
                // every window is empty: jump to the next pane with data
                let mut nxt = new_frontier;
                for (p, _) in self.hot.iter() {
                    nxt = nxt.min(p);
                }
                if nxt > f {
                    frontier = nxt;
                    kept_from = Some(nxt);
                    continue;
                }
            }
            if let Some(mut pane) = self.hot.pop(f) {
                if !pane.is_empty() {
                    pane.shrink();
                    self.totals.merge(&pane, 1)?;
                    self.rows_of(py, &rows, &row_type, &pane, product(f, self.step_ms)?)?;
                    self.panes.insert(f, pane);
                }
            }
            frontier = f + 1;
            let old = f - self.max_panes;
            if let Some(gone) = self.panes.pop(old) {
                if !gone.is_empty() && self.mode != Mode::Delta {
                    self.freeze(py, old, &gone)?;
                }
            }
            kept_from = match kept_from {
                Some(k) => Some(k.max(old + 1)),
                None => return Err(PyTypeError::new_err("the counter's _kept_from is None")),
            };
        }
        self.frontier = Some(frontier);
        self.kept_from = kept_from;
        Ok(rows)
    }

    /// `TransitionCounter._sync(size)`: bring one window up to the current frontier.
    fn sync(&mut self, size: &Bound<'_, PyAny>) -> PyResult<()> {
        let i = self.size_at(size)?;
        let f = match self.frontier {
            Some(f) => f,
            None => return Ok(()),
        };
        let at = self.synced[i];
        if at == Some(f) {
            return Ok(());
        }
        let n = self.sizes[i].2;
        let afresh = match at {
            None => true,
            Some(at) if 2 * (f - at) >= n => true,
            // `at - n < self._kept_from` (None there is a TypeError in Python too)
            Some(at) => match self.kept_from {
                Some(k) => at - n < k,
                None => return Err(PyTypeError::new_err("the counter's _kept_from is None")),
            },
        };
        let mut window = std::mem::take(&mut self.windows[i]);
        if afresh {
            // cheaper (or only possible) to sum the panes afresh
            window.clear();
            for (p, pane) in self.panes.iter() {
                if f - n <= p && p < f {
                    window.merge(pane, 1)?;
                }
            }
        } else {
            let at = at.unwrap_or(f);
            for p in at..f {
                if let Some(entering) = self.panes.get(p) {
                    if !entering.is_empty() {
                        window.merge(entering, 1)?;
                    }
                }
                if let Some(leaving) = self.panes.get(p - n) {
                    if !leaving.is_empty() {
                        window.merge(leaving, -1)?;
                    }
                }
            }
        }
        self.windows[i] = window;
        self.synced[i] = Some(f);
        Ok(())
    }

    /// The Python counter's attribute `name`, made from the state (a copy, but `archive`).
    fn get<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        Ok(match name {
            "frontier_pane" => self.frontier.into_py(py).into_bound(py),
            "_kept_from" => self.kept_from.into_py(py).into_bound(py),
            "hot" => self.panes_obj(py, &self.hot)?.into_any(),
            "panes" => self.panes_obj(py, &self.panes)?.into_any(),
            "_thawed" => self.panes_obj(py, &self.thawed)?.into_any(),
            "_windows" => {
                let d = PyDict::new_bound(py);
                for (s, w) in self.sizes.iter().zip(self.windows.iter()) {
                    d.set_item(s.1.bind(py), self.counts_obj(py, w)?)?;
                }
                d.into_any()
            }
            "_synced" => {
                let d = PyDict::new_bound(py);
                for (s, at) in self.sizes.iter().zip(self.synced.iter()) {
                    d.set_item(s.1.bind(py), *at)?;
                }
                d.into_any()
            }
            "totals" => self.counts_obj(py, &self.totals)?,
            "dirty" => {
                PySet::new_bound(py, &self.dirty.iter().copied().collect::<Vec<i64>>())?.into_any()
            }
            "archive" => self.archive.bind(py).clone().into_any(),
            "deltas" => {
                let d = PyDict::new_bound(py);
                for (p, cells) in self.deltas.iter() {
                    d.set_item(p, self.cells_dict(py, cells)?)?;
                }
                d.into_any()
            }
            "changed" => {
                let d = PyDict::new_bound(py);
                for (p, keys) in self.changed.iter() {
                    let set = PySet::empty_bound(py)?;
                    for c in keys.iter() {
                        set.add(unsafe { Bound::from_owned_ptr(py, self.key_obj(py, c)?) })?;
                    }
                    d.set_item(p, set)?;
                }
                d.into_any()
            }
            _ => {
                return Err(PyValueError::new_err(format!(
                    "no counter state named {:?}",
                    name
                )))
            }
        })
    }

    /// Set the Python counter's attribute `name` to `value` (read into the native state).
    fn set(&mut self, name: &str, value: &Bound<'_, PyAny>) -> PyResult<()> {
        match name {
            "frontier_pane" => self.frontier = opt_int(value)?,
            "_kept_from" => self.kept_from = opt_int(value)?,
            "hot" => self.hot = self.panes_from(value, true)?,
            "panes" => self.panes = self.panes_from(value, true)?,
            "_thawed" => self.thawed = self.panes_from(value, true)?,
            "_windows" => {
                let mut windows: Vec<Cells> = self.sizes.iter().map(|_| Cells::default()).collect();
                for (size, counts) in value.downcast::<PyDict>()?.iter() {
                    let i = self.size_at(&size)?;
                    windows[i] = self.cells_of(&counts)?;
                }
                self.windows = windows;
            }
            "_synced" => {
                let mut synced = vec![None; self.sizes.len()];
                for (size, at) in value.downcast::<PyDict>()?.iter() {
                    synced[self.size_at(&size)?] = opt_int(&at)?;
                }
                self.synced = synced;
            }
            "totals" => self.totals = self.cells_of(value)?,
            "dirty" => {
                let mut dirty = BTreeSet::new();
                for p in value.iter()? {
                    dirty.insert(p?.extract()?);
                }
                self.dirty = dirty;
            }
            "archive" => self.archive = value.downcast::<PyDict>()?.clone().unbind(),
            "deltas" => self.deltas = self.panes_from(value, false)?,
            "changed" => {
                let mut changed = Panes::default();
                let mut seen = Seen::default();
                for (p, keys) in value.downcast::<PyDict>()?.iter() {
                    let mut set = FxSet::default();
                    for key in keys.iter()? {
                        set.insert(self.cell_of(&mut seen, &key?)?);
                    }
                    changed.insert(p.extract()?, set);
                }
                self.changed = changed;
            }
            _ => {
                return Err(PyValueError::new_err(format!(
                    "no counter state named {:?}",
                    name
                )))
            }
        }
        Ok(())
    }
}

/// `save_long`: BININT1, BININT2 or BININT within 32 bits, else LONG1 (two's complement,
/// little-endian, the fewest bytes).
fn pickle_int(out: &mut Vec<u8>, v: i64) {
    if (-0x8000_0000..=0x7fff_ffff).contains(&v) {
        let b = (v as i32 as u32).to_le_bytes();
        if b[3] != 0 || b[2] != 0 {
            out.push(b'J');
            out.extend_from_slice(&b);
        } else if b[1] != 0 {
            out.extend_from_slice(&[b'M', b[0], b[1]]);
        } else {
            out.extend_from_slice(&[b'K', b[0]]);
        }
        return;
    }
    let nbits = 64 - v.unsigned_abs().leading_zeros() as usize;
    let mut nbytes = (nbits >> 3) + 1;
    let bytes = (v as i128).to_le_bytes();
    if v < 0 && nbytes > 1 && bytes[nbytes - 1] == 0xff && bytes[nbytes - 2] & 0x80 != 0 {
        nbytes -= 1;
    }
    out.extend_from_slice(&[0x8a, nbytes as u8]); // LONG1
    out.extend_from_slice(&bytes[..nbytes]);
}
