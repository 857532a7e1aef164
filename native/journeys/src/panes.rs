//! `TransitionCounter`'s pane finalization (`advance`), its corrections of final panes
//! (`_correct`) and its window syncing (`_sync`) in Rust (issue 4), over the same Python state.
//!
//! The counter's state stays what `processors/transitions.py` keeps: panes are `TransitionCounts`
//! whose `cells` dicts map `(segment, channel, prev2, src, dst, gap bucket)` to `(n, gap_sum_ms)`;
//! the archive holds `pickle.dumps` of a pane's cells. What runs here is the Python code's every
//! dict operation, on the same objects and in the same order (so dicts keep the same order and
//! pickles the same bytes), without the interpreter loop: a cell is merged with the hash the
//! source dict already holds (`_PyDict_Next`, `_PyDict_*_KnownHash`: no tuple hashed again), and
//! a cell row is one tuple allocation of the row type. Outputs and state are the Python engine's,
//! which `bench/bench_chain.py --fingerprint` and `tests/unit/test_journeys_native.py` check.

use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PySet, PyTuple, PyType};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::os::raw::c_int;

extern "C" {
    // CPython's own (exported, not in PyO3's bindings): lookups with the hash already known.
    fn _PyDict_GetItem_KnownHash(
        mp: *mut ffi::PyObject,
        key: *mut ffi::PyObject,
        hash: ffi::Py_hash_t,
    ) -> *mut ffi::PyObject;
    fn _PyDict_DelItem_KnownHash(
        mp: *mut ffi::PyObject,
        key: *mut ffi::PyObject,
        hash: ffi::Py_hash_t,
    ) -> c_int;
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Pane,
    Cells,
    Delta,
}

fn check(py: Python<'_>, rc: c_int) -> PyResult<()> {
    if rc < 0 {
        Err(PyErr::fetch(py))
    } else {
        Ok(())
    }
}

/// A new reference or the error Python set.
fn owned(py: Python<'_>, p: *mut ffi::PyObject) -> PyResult<*mut ffi::PyObject> {
    if p.is_null() {
        Err(PyErr::fetch(py))
    } else {
        Ok(p)
    }
}

fn int_of(py: Python<'_>, o: *mut ffi::PyObject) -> PyResult<i64> {
    let v = unsafe { ffi::PyLong_AsLongLong(o) };
    if v == -1 && unsafe { !ffi::PyErr_Occurred().is_null() } {
        return Err(PyErr::fetch(py));
    }
    Ok(v)
}

/// The two items of a cell's value `(n, gap_sum_ms)` (borrowed).
fn pair(o: *mut ffi::PyObject) -> PyResult<(*mut ffi::PyObject, *mut ffi::PyObject)> {
    unsafe {
        if ffi::PyTuple_Check(o) == 0 || ffi::PyTuple_GET_SIZE(o) != 2 {
            return Err(PyTypeError::new_err(
                "a cell's value is a tuple (n, gap_sum_ms)",
            ));
        }
        Ok((ffi::PyTuple_GET_ITEM(o, 0), ffi::PyTuple_GET_ITEM(o, 1)))
    }
}

fn sum(a: i64, b: i64) -> PyResult<i64> {
    a.checked_add(b)
        .ok_or_else(|| PyOverflowError::new_err("a cell's count overflows 64 bits"))
}

fn product(a: i64, b: i64) -> PyResult<i64> {
    a.checked_mul(b)
        .ok_or_else(|| PyOverflowError::new_err("a cell's count overflows 64 bits"))
}

/// A new tuple holding new references to `items`.
unsafe fn tuple_of(py: Python<'_>, items: &[*mut ffi::PyObject]) -> PyResult<*mut ffi::PyObject> {
    let t = owned(py, ffi::PyTuple_New(items.len() as ffi::Py_ssize_t))?;
    for (i, &o) in items.iter().enumerate() {
        ffi::Py_INCREF(o);
        ffi::PyTuple_SET_ITEM(t, i as ffi::Py_ssize_t, o);
    }
    Ok(t)
}

/// A new tuple `(n, gap_sum)` of new ints.
unsafe fn value_of(py: Python<'_>, n: i64, gap_sum: i64) -> PyResult<*mut ffi::PyObject> {
    let a = owned(py, ffi::PyLong_FromLongLong(n))?;
    let b = ffi::PyLong_FromLongLong(gap_sum);
    if b.is_null() {
        ffi::Py_DECREF(a);
        return Err(PyErr::fetch(py));
    }
    let t = ffi::PyTuple_New(2);
    if t.is_null() {
        ffi::Py_DECREF(a);
        ffi::Py_DECREF(b);
        return Err(PyErr::fetch(py));
    }
    ffi::PyTuple_SET_ITEM(t, 0, a);
    ffi::PyTuple_SET_ITEM(t, 1, b);
    Ok(t)
}

/// `d[key] = value` (stealing `value`) with the key's hash known.
unsafe fn set_known(
    py: Python<'_>,
    d: *mut ffi::PyObject,
    key: *mut ffi::PyObject,
    value: *mut ffi::PyObject,
    hash: ffi::Py_hash_t,
) -> PyResult<()> {
    let rc = ffi::_PyDict_SetItem_KnownHash(d, key, value, hash);
    ffi::Py_DECREF(value);
    check(py, rc)
}

/// Each `(key, value, hash)` of a dict, borrowed, in its order. The dict must not change while
/// iterated (the callers only change other dicts).
fn each_cell(
    py: Python<'_>,
    d: &Bound<'_, PyDict>,
    mut f: impl FnMut(*mut ffi::PyObject, *mut ffi::PyObject, ffi::Py_hash_t) -> PyResult<()>,
) -> PyResult<()> {
    let _ = py;
    let mut pos: ffi::Py_ssize_t = 0;
    let mut key: *mut ffi::PyObject = std::ptr::null_mut();
    let mut value: *mut ffi::PyObject = std::ptr::null_mut();
    let mut hash: ffi::Py_hash_t = 0;
    while unsafe { ffi::_PyDict_Next(d.as_ptr(), &mut pos, &mut key, &mut value, &mut hash) } != 0 {
        f(key, value, hash)?;
    }
    Ok(())
}

/// `cells[key] = (n, gap_sum)` where `key` holds the tuple `old`. When the dict holds the only
/// reference to `old`, no one can see it change: its two items are replaced instead (as CPython's
/// own `dict.items()` iterator reuses its result tuple), which spares a tuple's deallocation and
/// allocation per cell; the dict's contents are the same either way.
unsafe fn set_value(
    py: Python<'_>,
    cells: *mut ffi::PyObject,
    key: *mut ffi::PyObject,
    hash: ffi::Py_hash_t,
    old: *mut ffi::PyObject,
    n: i64,
    gap_sum: i64,
) -> PyResult<()> {
    if ffi::Py_REFCNT(old) != 1 || ffi::PyTuple_CheckExact(old) == 0 {
        return set_known(py, cells, key, value_of(py, n, gap_sum)?, hash);
    }
    let a = owned(py, ffi::PyLong_FromLongLong(n))?;
    let b = ffi::PyLong_FromLongLong(gap_sum);
    if b.is_null() {
        ffi::Py_DECREF(a);
        return Err(PyErr::fetch(py));
    }
    let (old_a, old_b) = (ffi::PyTuple_GET_ITEM(old, 0), ffi::PyTuple_GET_ITEM(old, 1));
    ffi::PyTuple_SET_ITEM(old, 0, a);
    ffi::PyTuple_SET_ITEM(old, 1, b);
    ffi::Py_DECREF(old_a);
    ffi::Py_DECREF(old_b);
    Ok(())
}

/// `_add_cell(cells, key, n, gap_sum)`: add to one cell, dropping it when it comes to (0, 0).
pub(crate) unsafe fn add_cell(
    py: Python<'_>,
    cells: *mut ffi::PyObject,
    key: *mut ffi::PyObject,
    hash: ffi::Py_hash_t,
    n: i64,
    gap_sum: i64,
) -> PyResult<()> {
    let v = _PyDict_GetItem_KnownHash(cells, key, hash);
    if v.is_null() {
        if !ffi::PyErr_Occurred().is_null() {
            return Err(PyErr::fetch(py));
        }
        if n != 0 || gap_sum != 0 {
            set_known(py, cells, key, value_of(py, n, gap_sum)?, hash)?;
        }
        return Ok(());
    }
    let (a, b) = pair(v)?;
    let n = sum(int_of(py, a)?, n)?;
    let gap_sum = sum(int_of(py, b)?, gap_sum)?;
    if n != 0 || gap_sum != 0 {
        set_value(py, cells, key, hash, v, n, gap_sum)
    } else {
        check(py, _PyDict_DelItem_KnownHash(cells, key, hash))
    }
}

/// `TransitionCounts.merge`: add (`sign = 1`) or retract (`sign = -1`) the cells of `src`.
fn merge_cells(
    py: Python<'_>,
    dst: &Bound<'_, PyDict>,
    src: &Bound<'_, PyDict>,
    sign: i64,
) -> PyResult<()> {
    if dst.is(src) {
        return Err(PyValueError::new_err(
            "cannot merge a pane's cells into themselves",
        ));
    }
    let d = dst.as_ptr();
    each_cell(py, src, |key, value, hash| unsafe {
        let (n, gap_sum) = pair(value)?;
        if sign != 1 {
            return add_cell(
                py,
                d,
                key,
                hash,
                product(sign, int_of(py, n)?)?,
                product(sign, int_of(py, gap_sum)?)?,
            );
        }
        let v = _PyDict_GetItem_KnownHash(d, key, hash);
        if v.is_null() {
            if !ffi::PyErr_Occurred().is_null() {
                return Err(PyErr::fetch(py));
            }
            // `cells[key] = (n, gap_sum)`: a new tuple of the same ints
            return set_known(py, d, key, tuple_of(py, &[n, gap_sum])?, hash);
        }
        let (a, b) = pair(v)?;
        let n = sum(int_of(py, a)?, int_of(py, n)?)?;
        let gap_sum = sum(int_of(py, b)?, int_of(py, gap_sum)?)?;
        if n != 0 || gap_sum != 0 {
            set_value(py, d, key, hash, v, n, gap_sum)
        } else {
            check(py, _PyDict_DelItem_KnownHash(d, key, hash))
        }
    })
}

/// `prefix + key + value` as a new record of the tuple subtype `row_type`, appended to `rows`.
unsafe fn push_row(
    py: Python<'_>,
    rows: &Bound<'_, PyList>,
    row_type: &Bound<'_, PyType>,
    prefix: &[*mut ffi::PyObject; 2],
    key: *mut ffi::PyObject,
    value: *mut ffi::PyObject,
) -> PyResult<()> {
    if ffi::PyTuple_Check(key) == 0 || ffi::PyTuple_GET_SIZE(key) != 6 {
        return Err(PyTypeError::new_err(
            "a cell's key is a tuple (segment, channel, prev2, src, dst, gap bucket)",
        ));
    }
    let (n, gap_sum) = pair(value)?;
    let tp = row_type.as_type_ptr();
    // `tuple.__new__(row_type, items)` allocates the same way (tuple_subtype_new)
    let alloc = (*tp).tp_alloc.unwrap_or(ffi::PyType_GenericAlloc);
    let row = owned(py, alloc(tp, 10))?;
    let items = [
        prefix[0],
        prefix[1],
        ffi::PyTuple_GET_ITEM(key, 0),
        ffi::PyTuple_GET_ITEM(key, 1),
        ffi::PyTuple_GET_ITEM(key, 2),
        ffi::PyTuple_GET_ITEM(key, 3),
        ffi::PyTuple_GET_ITEM(key, 4),
        ffi::PyTuple_GET_ITEM(key, 5),
        n,
        gap_sum,
    ];
    for (i, &o) in items.iter().enumerate() {
        ffi::Py_INCREF(o);
        ffi::PyTuple_SET_ITEM(row, i as ffi::Py_ssize_t, o);
    }
    let rc = ffi::PyList_Append(rows.as_ptr(), row);
    ffi::Py_DECREF(row);
    check(py, rc)
}

/// The keys of a set or dict, sorted as `sorted()` sorts them.
fn sorted_keys<'py>(py: Python<'py>, of: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
    let list = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PySequence_List(of.as_ptr()))? };
    let list = list.downcast_into::<PyList>()?;
    list.sort()?;
    Ok(list)
}

fn opt_int(o: &Bound<'_, PyAny>) -> PyResult<Option<i64>> {
    if o.is_none() {
        Ok(None)
    } else {
        Ok(Some(o.extract()?))
    }
}

/// `pickle.dumps(cells, protocol)` (protocol 4 or 5) of a cell dict, byte for byte what CPython's
/// `_pickle` writes, for what cell dicts hold: exact dicts, tuples, str and int objects. The
/// memo is by object identity, as `_pickle`'s (a str or tuple seen before is a `BINGET`), the
/// dict is written in batches of 1000 items (with `_pickle`'s empty last batch when the size is
/// a multiple of 1000) and the whole pickle is one frame. `None` for anything else (another
/// type, a str over 255 bytes or with lone surrogates, an int beyond 64 bits, a pickle of 64 KiB
/// or more, which `_pickle` cuts into several frames): the caller then calls `pickle.dumps`.
fn pickle_cells(cells: &Bound<'_, PyDict>, protocol: i64) -> Option<Vec<u8>> {
    if !(4..=5).contains(&protocol) || unsafe { ffi::PyDict_CheckExact(cells.as_ptr()) } == 0 {
        return None;
    }
    let mut w = Pickler {
        out: Vec::with_capacity(64 + 40 * cells.len()),
        memo: HashMap::with_capacity_and_hasher(3 * cells.len() + 8, Default::default()),
    };
    w.out.extend_from_slice(&[0x80, protocol as u8]); // PROTO
    w.out.extend_from_slice(&[0x95, 0, 0, 0, 0, 0, 0, 0, 0]); // FRAME, its length set at the end
    w.out.push(b'}'); // EMPTY_DICT
    w.memoize(cells.as_ptr());
    let n = cells.len();
    let mut pos: ffi::Py_ssize_t = 0;
    let mut key: *mut ffi::PyObject = std::ptr::null_mut();
    let mut value: *mut ffi::PyObject = std::ptr::null_mut();
    let mut next = |key: &mut *mut ffi::PyObject, value: &mut *mut ffi::PyObject| unsafe {
        ffi::PyDict_Next(cells.as_ptr(), &mut pos, key, value) != 0
    };
    if n == 1 {
        next(&mut key, &mut value);
        w.save(key)?;
        w.save(value)?;
        w.out.push(b's'); // SETITEM
    } else if n > 1 {
        loop {
            w.out.push(b'('); // MARK
            let mut i = 0;
            while next(&mut key, &mut value) {
                w.save(key)?;
                w.save(value)?;
                i += 1;
                if i == 1000 {
                    break;
                }
            }
            w.out.push(b'u'); // SETITEMS
            if i != 1000 {
                break;
            }
        }
    }
    w.out.push(b'.'); // STOP
    let frame_len = w.out.len() - 11;
    if frame_len >= 65536 {
        return None;
    }
    if frame_len < 4 {
        w.out.drain(2..11);
    } else {
        w.out[3..11].copy_from_slice(&(frame_len as u64).to_le_bytes());
    }
    Some(w.out)
}

/// Hashes an object's address (the memo's key) in one multiplication.
#[derive(Default)]
struct AddrHash(u64);

impl Hasher for AddrHash {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_usize(&mut self, i: usize) {
        self.0 = (i as u64 >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

struct Pickler {
    out: Vec<u8>,
    memo: HashMap<usize, u32, BuildHasherDefault<AddrHash>>,
}

impl Pickler {
    fn memoize(&mut self, obj: *mut ffi::PyObject) {
        let i = self.memo.len() as u32;
        self.memo.insert(obj as usize, i);
        self.out.push(0x94); // MEMOIZE
    }

    fn save(&mut self, obj: *mut ffi::PyObject) -> Option<()> {
        unsafe {
            let tp = ffi::Py_TYPE(obj);
            if tp == std::ptr::addr_of_mut!(ffi::PyLong_Type) {
                let mut overflow: c_int = 0;
                let v = ffi::PyLong_AsLongLongAndOverflow(obj, &mut overflow);
                if overflow != 0 || (v == -1 && !ffi::PyErr_Occurred().is_null()) {
                    ffi::PyErr_Clear();
                    return None;
                }
                self.int(v);
                return Some(());
            }
            if let Some(&i) = self.memo.get(&(obj as usize)) {
                if i < 256 {
                    self.out.extend_from_slice(&[b'h', i as u8]); // BINGET
                } else {
                    self.out.push(b'j'); // LONG_BINGET
                    self.out.extend_from_slice(&i.to_le_bytes());
                }
                return Some(());
            }
            if tp == std::ptr::addr_of_mut!(ffi::PyUnicode_Type) {
                let mut size: ffi::Py_ssize_t = 0;
                let data = ffi::PyUnicode_AsUTF8AndSize(obj, &mut size);
                if data.is_null() {
                    ffi::PyErr_Clear();
                    return None;
                }
                if size > 0xff {
                    return None;
                }
                self.out.extend_from_slice(&[0x8c, size as u8]); // SHORT_BINUNICODE
                self.out.extend_from_slice(std::slice::from_raw_parts(
                    data as *const u8,
                    size as usize,
                ));
                self.memoize(obj);
                return Some(());
            }
            if tp == std::ptr::addr_of_mut!(ffi::PyTuple_Type) {
                let n = ffi::PyTuple_GET_SIZE(obj);
                if n == 0 {
                    return None;
                }
                if n > 3 {
                    self.out.push(b'('); // MARK
                }
                for i in 0..n {
                    self.save(ffi::PyTuple_GET_ITEM(obj, i))?;
                }
                // TUPLE1, TUPLE2, TUPLE3 or TUPLE
                self.out.push(match n {
                    1 => 0x85,
                    2 => 0x86,
                    3 => 0x87,
                    _ => b't',
                });
                self.memoize(obj);
                return Some(());
            }
            None
        }
    }

    /// `save_long`: BININT1, BININT2 or BININT within 32 bits, else LONG1 (two's complement,
    /// little-endian, the fewest bytes).
    fn int(&mut self, v: i64) {
        if (-0x8000_0000..=0x7fff_ffff).contains(&v) {
            let b = (v as i32 as u32).to_le_bytes();
            if b[3] != 0 || b[2] != 0 {
                self.out.push(b'J');
                self.out.extend_from_slice(&b);
            } else if b[1] != 0 {
                self.out.extend_from_slice(&[b'M', b[0], b[1]]);
            } else {
                self.out.extend_from_slice(&[b'K', b[0]]);
            }
            return;
        }
        let nbits = 64 - v.unsigned_abs().leading_zeros() as usize;
        let mut nbytes = (nbits >> 3) + 1;
        let bytes = (v as i128).to_le_bytes();
        if v < 0 && nbytes > 1 && bytes[nbytes - 1] == 0xff && bytes[nbytes - 2] & 0x80 != 0 {
            nbytes -= 1;
        }
        self.out.extend_from_slice(&[0x8a, nbytes as u8]); // LONG1
        self.out.extend_from_slice(&bytes[..nbytes]);
    }
}

/// What one call reads of the Python counter (`TransitionCounter.__init__` makes it).
struct Counter<'py> {
    obj: Bound<'py, PyAny>,
    mode: Mode,
    step_ms: i64,
    step_s: Bound<'py, PyAny>,
    max_panes: i64,
    sizes: Bound<'py, PyDict>,
    synced: Bound<'py, PyDict>,
    hot: Bound<'py, PyDict>,
    panes: Bound<'py, PyDict>,
    totals: Bound<'py, PyDict>,
    archive: Bound<'py, PyDict>,
    thawed: Bound<'py, PyDict>,
    dirty: Bound<'py, PySet>,
    changed: Bound<'py, PyDict>,
    deltas: Bound<'py, PyDict>,
}

/// `TransitionCounter`'s pane finalization, corrections and window syncing, over the Python
/// counter's own state (see the module doc). Holds no state: the types and functions it makes
/// and calls (`TransitionCounts`, the three row types, `pickle.dumps` / `loads`).
#[pyclass(module = "journeymap_journeys", frozen)]
pub struct NativePanes {
    counts_type: Py<PyAny>,
    row_type: Py<PyType>,
    update_type: Py<PyType>,
    delta_type: Py<PyType>,
    dumps: Py<PyAny>,
    loads: Py<PyAny>,
    protocol: i64,
}

impl NativePanes {
    fn counter<'py>(&self, py: Python<'py>, obj: &Bound<'py, PyAny>) -> PyResult<Counter<'py>> {
        let dict = |name: &Bound<'py, pyo3::types::PyString>| -> PyResult<Bound<'py, PyDict>> {
            Ok(obj.getattr(name)?.downcast_into::<PyDict>()?)
        };
        let mode = match obj
            .getattr(intern!(py, "corrections"))?
            .extract::<String>()?
            .as_str()
        {
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
        let step_ms: i64 = obj.getattr(intern!(py, "step_ms"))?.extract()?;
        if step_ms <= 0 {
            return Err(PyValueError::new_err("step_ms must be positive"));
        }
        let totals = obj.getattr(intern!(py, "totals"))?;
        Ok(Counter {
            mode,
            step_ms,
            step_s: obj.getattr(intern!(py, "step_s"))?,
            max_panes: obj.getattr(intern!(py, "max_panes"))?.extract()?,
            sizes: dict(intern!(py, "sizes"))?,
            synced: dict(intern!(py, "_synced"))?,
            hot: dict(intern!(py, "hot"))?,
            panes: dict(intern!(py, "panes"))?,
            totals: totals
                .getattr(intern!(py, "cells"))?
                .downcast_into::<PyDict>()?,
            archive: dict(intern!(py, "archive"))?,
            thawed: dict(intern!(py, "_thawed"))?,
            dirty: obj
                .getattr(intern!(py, "dirty"))?
                .downcast_into::<PySet>()?,
            changed: dict(intern!(py, "changed"))?,
            deltas: dict(intern!(py, "deltas"))?,
            obj: obj.clone(),
        })
    }

    fn cells_of<'py>(py: Python<'py>, pane: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyDict>> {
        Ok(pane
            .getattr(intern!(py, "cells"))?
            .downcast_into::<PyDict>()?)
    }

    /// `_freeze`: the pane's cells pickled into the archive (or its entry dropped if empty).
    fn freeze(
        &self,
        py: Python<'_>,
        c: &Counter<'_>,
        p: i64,
        pane: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let cells = Self::cells_of(py, pane)?;
        if cells.is_empty() {
            if c.archive.contains(p)? {
                c.archive.del_item(p)?;
            }
            return Ok(());
        }
        c.archive.set_item(p, self.pickled(py, &cells)?)
    }

    /// `pickle.dumps(cells, protocol)`: written here, or by `pickle` where `pickle_cells` cannot.
    fn pickled<'py>(
        &self,
        py: Python<'py>,
        cells: &Bound<'py, PyDict>,
    ) -> PyResult<Bound<'py, PyAny>> {
        match pickle_cells(cells, self.protocol) {
            Some(bytes) => Ok(PyBytes::new_bound(py, &bytes).into_any()),
            None => self.dumps.bind(py).call1((cells, self.protocol)),
        }
    }

    /// `d.pop(p, None)`.
    fn pop<'py>(d: &Bound<'py, PyDict>, p: i64) -> PyResult<Option<Bound<'py, PyAny>>> {
        let v = d.get_item(p)?;
        if v.is_some() {
            d.del_item(p)?;
        }
        Ok(v)
    }

    /// The cell rows of `cells` (`TransitionCounts.cell_rows`) appended to `rows`.
    fn rows_of(
        &self,
        py: Python<'_>,
        rows: &Bound<'_, PyList>,
        row_type: &Bound<'_, PyType>,
        cells: &Bound<'_, PyDict>,
        start_ms: i64,
        size_s: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let start = start_ms.into_py(py).into_bound(py);
        let prefix = [start.as_ptr(), size_s.as_ptr()];
        each_cell(py, cells, |key, value, _| unsafe {
            push_row(py, rows, row_type, &prefix, key, value)
        })
    }

    fn correct_one(
        &self,
        py: Python<'_>,
        c: &Counter<'_>,
        frontier: i64,
        p: i64,
        cells: &Bound<'_, PyDict>,
    ) -> PyResult<()> {
        // `{k: v for k, v in cells.items() if v[0] or v[1]}`
        let delta = PyDict::new_bound(py);
        each_cell(py, cells, |key, value, hash| unsafe {
            let (n, gap_sum) = pair(value)?;
            if int_of(py, n)? != 0 || int_of(py, gap_sum)? != 0 {
                ffi::Py_INCREF(value);
                set_known(py, delta.as_ptr(), key, value, hash)?;
            }
            Ok(())
        })?;
        if delta.is_empty() {
            return Ok(()); // e.g. a merge moved steps between customers: the cells are unchanged
        }
        merge_cells(py, &c.totals, &delta, 1)?;
        if c.mode == Mode::Delta {
            match c.deltas.get_item(p)? {
                None => c.deltas.set_item(p, delta.copy()?)?,
                Some(pending) => {
                    let pending = pending.downcast_into::<PyDict>()?;
                    each_cell(py, &delta, |key, value, hash| unsafe {
                        let (n, gap_sum) = pair(value)?;
                        add_cell(
                            py,
                            pending.as_ptr(),
                            key,
                            hash,
                            int_of(py, n)?,
                            int_of(py, gap_sum)?,
                        )
                    })?;
                }
            }
        }
        if c.mode == Mode::Cells {
            let keys = match c.changed.get_item(p)? {
                Some(keys) => keys.downcast_into::<PySet>()?,
                None => {
                    let keys = PySet::empty_bound(py)?;
                    c.changed.set_item(p, &keys)?;
                    keys
                }
            };
            keys.call_method1(intern!(py, "update"), (&delta,))?;
        }
        if p < frontier - c.max_panes {
            if c.mode != Mode::Delta {
                // re-publish the archived pane (or its cells)
                let pane = match c.thawed.get_item(p)? {
                    Some(pane) => pane,
                    None => {
                        let thawed = match Self::pop(&c.archive, p)? {
                            Some(frozen) => self.loads.bind(py).call1((frozen,))?,
                            None => PyDict::new_bound(py).into_any(),
                        };
                        let pane = self.counts_type.bind(py).call1((thawed,))?;
                        c.thawed.set_item(p, &pane)?;
                        pane
                    }
                };
                merge_cells(py, &Self::cells_of(py, &pane)?, &delta, 1)?;
                c.dirty.add(p)?;
            }
            return Ok(());
        }
        let pane = match c.panes.get_item(p)? {
            Some(pane) => pane,
            None => {
                let pane = self.counts_type.bind(py).call0()?;
                c.panes.set_item(p, &pane)?;
                pane
            }
        };
        merge_cells(py, &Self::cells_of(py, &pane)?, &delta, 1)?;
        if c.mode != Mode::Delta {
            c.dirty.add(p)?;
        }
        let windows = c
            .obj
            .getattr(intern!(py, "_windows"))?
            .downcast_into::<PyDict>()?;
        for (size, n) in c.sizes.iter() {
            let n: i64 = n.extract()?;
            if let Some(at) = opt_int(&c.synced.get_item(&size)?.ok_or_else(|| {
                PyValueError::new_err("a window size without its synced frontier")
            })?)? {
                if at - n <= p && p < at {
                    let window = windows
                        .get_item(&size)?
                        .ok_or_else(|| PyValueError::new_err("a window size without its window"))?;
                    merge_cells(py, &Self::cells_of(py, &window)?, &delta, 1)?;
                }
            }
        }
        Ok(())
    }
}

#[pymethods]
impl NativePanes {
    #[new]
    fn new(
        counts_type: Py<PyAny>,
        row_type: Bound<'_, PyType>,
        update_type: Bound<'_, PyType>,
        delta_type: Bound<'_, PyType>,
        dumps: Py<PyAny>,
        loads: Py<PyAny>,
        protocol: i64,
    ) -> PyResult<Self> {
        for t in [&row_type, &update_type, &delta_type] {
            if !t.is_subclass_of::<PyTuple>()? {
                return Err(PyTypeError::new_err("the row types are tuple subtypes"));
            }
        }
        Ok(NativePanes {
            counts_type,
            row_type: row_type.unbind(),
            update_type: update_type.unbind(),
            delta_type: delta_type.unbind(),
            dumps,
            loads,
            protocol,
        })
    }

    /// `TransitionCounts.merge` of two cell dicts: `dst` += `sign` * `src`.
    #[pyo3(signature = (dst, src, sign = 1))]
    fn merge(
        &self,
        py: Python<'_>,
        dst: &Bound<'_, PyDict>,
        src: &Bound<'_, PyDict>,
        sign: i64,
    ) -> PyResult<()> {
        merge_cells(py, dst, src, sign)
    }

    /// `pickle.dumps(cells, protocol)` as `_freeze` writes it (see `pickle_cells`).
    fn dumps<'py>(
        &self,
        py: Python<'py>,
        cells: &Bound<'py, PyDict>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.pickled(py, cells)
    }

    /// `TransitionCounts.cell_rows` of a cell dict.
    fn cell_rows<'py>(
        &self,
        py: Python<'py>,
        cells: &Bound<'py, PyDict>,
        pane_start_ms: i64,
        pane_size_s: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let rows = PyList::empty_bound(py);
        self.rows_of(
            py,
            &rows,
            self.row_type.bind(py),
            cells,
            pane_start_ms,
            pane_size_s,
        )?;
        Ok(rows)
    }

    /// `TransitionCounter.advance(watermark_ms)` (without `on_window`) of the Python counter
    /// `counter`: its state changed as the Python method changes it, its rows returned.
    fn advance<'py>(
        &self,
        py: Python<'py>,
        counter: &Bound<'py, PyAny>,
        watermark_ms: i64,
    ) -> PyResult<Bound<'py, PyList>> {
        let c = self.counter(py, counter)?;
        let lateness_ms: i64 = counter.getattr(intern!(py, "lateness_ms"))?.extract()?;
        let new_frontier = (watermark_ms - lateness_ms).div_euclid(c.step_ms);
        let rows = PyList::empty_bound(py);
        let n_frontier = intern!(py, "frontier_pane");
        let n_kept = intern!(py, "_kept_from");
        let mut frontier = match opt_int(&counter.getattr(n_frontier)?)? {
            Some(f) => f,
            None => {
                let mut f = new_frontier;
                for p in c.hot.keys() {
                    f = f.min(p.extract()?);
                }
                counter.setattr(n_frontier, f)?;
                counter.setattr(n_kept, f)?;
                for size in c.sizes.keys() {
                    c.synced.set_item(size, f)?;
                }
                f
            }
        };
        let row_type = self.row_type.bind(py);
        if !c.dirty.is_empty() {
            for p in sorted_keys(py, c.dirty.as_any())?.iter() {
                let p: i64 = p.extract()?;
                let pane = match c.panes.get_item(p)? {
                    Some(pane) => Some(pane),
                    None => Self::pop(&c.thawed, p)?,
                };
                let pane = match pane {
                    Some(pane) => pane,
                    None => continue,
                };
                if p < frontier - c.max_panes {
                    // archived: keep the new value
                    self.freeze(py, &c, p, &pane)?;
                }
                let start = product(p, c.step_ms)?;
                let cells = Self::cells_of(py, &pane)?;
                if c.mode == Mode::Cells {
                    if let Some(keys) = Self::pop(&c.changed, p)? {
                        let start = start.into_py(py).into_bound(py);
                        let prefix = [start.as_ptr(), c.step_s.as_ptr()];
                        let zero =
                            unsafe { Bound::from_owned_ptr_or_err(py, value_of(py, 0, 0)?)? };
                        let update_type = self.update_type.bind(py);
                        for key in sorted_keys(py, &keys)?.iter() {
                            let value = cells.get_item(&key)?;
                            let value = value.as_ref().unwrap_or(&zero);
                            unsafe {
                                push_row(
                                    py,
                                    &rows,
                                    update_type,
                                    &prefix,
                                    key.as_ptr(),
                                    value.as_ptr(),
                                )?
                            };
                        }
                    }
                    continue;
                }
                let before = rows.len();
                self.rows_of(py, &rows, row_type, &cells, start, &c.step_s)?;
                if rows.len() == before {
                    // A correction can empty a pane; one zero row still carries its new
                    // version, so a sink keeping the latest emission of each pane drops the
                    // old cells.
                    let empty = row_type.call1((start, &c.step_s, "", "", "", "", "", 0, 0, 0))?;
                    rows.append(empty)?;
                }
            }
            c.dirty.clear();
        }
        if !c.deltas.is_empty() {
            let delta_type = self.delta_type.bind(py);
            for p in sorted_keys(py, c.deltas.as_any())?.iter() {
                let cells = c
                    .deltas
                    .get_item(&p)?
                    .ok_or_else(|| PyValueError::new_err("deltas changed while emitted"))?;
                let start = product(p.extract()?, c.step_ms)?;
                self.rows_of(
                    py,
                    &rows,
                    delta_type,
                    cells.downcast::<PyDict>()?,
                    start,
                    &c.step_s,
                )?;
            }
            c.deltas.clear();
        }
        let mut kept_from = opt_int(&counter.getattr(n_kept)?)?;
        let totals = &c.totals;
        while frontier < new_frontier {
            let f = frontier;
            if c.panes.is_empty() {
                // every window is empty: jump to the next pane with data
                let mut nxt = new_frontier;
                for p in c.hot.keys() {
                    nxt = nxt.min(p.extract()?);
                }
                if nxt > f {
                    frontier = nxt;
                    kept_from = Some(nxt);
                    continue;
                }
            }
            if let Some(pane) = Self::pop(&c.hot, f)? {
                if pane.is_truthy()? {
                    c.panes.set_item(f, &pane)?;
                    let cells = Self::cells_of(py, &pane)?;
                    merge_cells(py, totals, &cells, 1)?;
                    self.rows_of(
                        py,
                        &rows,
                        row_type,
                        &cells,
                        product(f, c.step_ms)?,
                        &c.step_s,
                    )?;
                }
            }
            frontier = f + 1;
            let old = f - c.max_panes;
            if let Some(gone) = Self::pop(&c.panes, old)? {
                if gone.is_truthy()? && c.mode != Mode::Delta {
                    self.freeze(py, &c, old, &gone)?;
                }
            }
            kept_from = match kept_from {
                Some(k) => Some(k.max(old + 1)),
                None => return Err(PyTypeError::new_err("the counter's _kept_from is None")),
            };
        }
        counter.setattr(n_frontier, frontier)?;
        counter.setattr(n_kept, kept_from)?;
        Ok(rows)
    }

    /// `TransitionCounter._correct(p, cells)` for each late pane of `late` (pane -> cells), in
    /// its order.
    fn correct(
        &self,
        py: Python<'_>,
        counter: &Bound<'_, PyAny>,
        late: &Bound<'_, PyDict>,
    ) -> PyResult<()> {
        let c = self.counter(py, counter)?;
        let frontier = opt_int(&counter.getattr(intern!(py, "frontier_pane"))?)?
            .ok_or_else(|| PyValueError::new_err("a late pane before any pane is final"))?;
        for (p, cells) in late.iter() {
            self.correct_one(py, &c, frontier, p.extract()?, cells.downcast::<PyDict>()?)?;
        }
        Ok(())
    }

    /// `TransitionCounter._sync(size)`: bring one window up to the current frontier.
    fn sync(
        &self,
        py: Python<'_>,
        counter: &Bound<'_, PyAny>,
        size: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let c = self.counter(py, counter)?;
        let f = match opt_int(&counter.getattr(intern!(py, "frontier_pane"))?)? {
            Some(f) => f,
            None => return Ok(()),
        };
        let at = opt_int(
            &c.synced
                .get_item(size)?
                .ok_or_else(|| PyValueError::new_err("no such window size"))?,
        )?;
        if at == Some(f) {
            return Ok(());
        }
        let n: i64 = c
            .sizes
            .get_item(size)?
            .ok_or_else(|| PyValueError::new_err("no such window size"))?
            .extract()?;
        let windows = counter
            .getattr(intern!(py, "_windows"))?
            .downcast_into::<PyDict>()?;
        let window = windows
            .get_item(size)?
            .ok_or_else(|| PyValueError::new_err("no such window size"))?;
        let window = Self::cells_of(py, &window)?;
        let kept_from = opt_int(&counter.getattr(intern!(py, "_kept_from"))?)?;
        let afresh = match at {
            None => true,
            Some(at) if 2 * (f - at) >= n => true,
            // `at - n < self._kept_from` (None there is a TypeError in Python too)
            Some(at) => match kept_from {
                Some(k) => at - n < k,
                None => return Err(PyTypeError::new_err("the counter's _kept_from is None")),
            },
        };
        if afresh {
            // cheaper (or only possible) to sum the panes afresh
            window.clear();
            for (p, pane) in c.panes.iter() {
                let p: i64 = p.extract()?;
                if f - n <= p && p < f {
                    merge_cells(py, &window, &Self::cells_of(py, &pane)?, 1)?;
                }
            }
        } else {
            let at = at.unwrap_or(f);
            for p in at..f {
                if let Some(entering) = c.panes.get_item(p)? {
                    if entering.is_truthy()? {
                        merge_cells(py, &window, &Self::cells_of(py, &entering)?, 1)?;
                    }
                }
                if let Some(leaving) = c.panes.get_item(p - n)? {
                    if leaving.is_truthy()? {
                        merge_cells(py, &window, &Self::cells_of(py, &leaving)?, -1)?;
                    }
                }
            }
        }
        c.synced.set_item(size, f)
    }
}
