//! `heapq.heappush` and `heapq.heappop` for the funnels' deadline heaps (Python lists of
//! `(deadline, customer, run start)`), in Rust (issue 4).
//!
//! The algorithm is CPython's (`Modules/_heapqmodule.c`: `siftdown`, `siftup`, the same moves of
//! the list's items), so the list ends in the same order as with `heapq`. Two `(int, str, int)`
//! tuples are compared here (ints as i64, strings by their UTF-8 bytes, which is code point
//! order): the answer of the tuples' `<`. Anything else is compared by Python (`<`).

use pyo3::exceptions::{PyIndexError, PyRuntimeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyListMethods};

/// An exact int that fits in an i64, or None.
unsafe fn long(o: *mut ffi::PyObject) -> Option<i64> {
    if ffi::PyLong_CheckExact(o) == 0 {
        return None;
    }
    let mut overflow = 0;
    let v = ffi::PyLong_AsLongLongAndOverflow(o, &mut overflow);
    if overflow != 0 {
        return None;
    }
    Some(v)
}

/// Whether `o` is a tuple of 3 items.
unsafe fn triple(o: *mut ffi::PyObject) -> bool {
    ffi::PyTuple_CheckExact(o) != 0 && ffi::PyTuple_GET_SIZE(o) == 3
}

/// The UTF-8 bytes of a str (None if it has none, e.g. a lone surrogate).
unsafe fn utf8<'a>(s: *mut ffi::PyObject) -> Option<&'a [u8]> {
    let mut n: ffi::Py_ssize_t = 0;
    let p = ffi::PyUnicode_AsUTF8AndSize(s, &mut n);
    if p.is_null() {
        ffi::PyErr_Clear();
        return None;
    }
    Some(std::slice::from_raw_parts(p as *const u8, n as usize))
}

/// `a < b` for two `(int, str, int)` tuples, read as far as they are equal (None: other items).
unsafe fn entry_lt(a: *mut ffi::PyObject, b: *mut ffi::PyObject) -> Option<bool> {
    if !triple(a) || !triple(b) {
        return None;
    }
    let (x, y) = (long(ffi::PyTuple_GET_ITEM(a, 0))?, long(ffi::PyTuple_GET_ITEM(b, 0))?);
    if x != y {
        return Some(x < y);
    }
    let (s, t) = (ffi::PyTuple_GET_ITEM(a, 1), ffi::PyTuple_GET_ITEM(b, 1));
    if ffi::PyUnicode_CheckExact(s) == 0 || ffi::PyUnicode_CheckExact(t) == 0 {
        return None;
    }
    if s != t {
        let (s, t) = (utf8(s)?, utf8(t)?);
        if s != t {
            return Some(s < t);
        }
    }
    let (x, y) = (long(ffi::PyTuple_GET_ITEM(a, 2))?, long(ffi::PyTuple_GET_ITEM(b, 2))?);
    Some(x < y)
}

/// `a < b`, as Python answers it.
fn lt(py: Python<'_>, a: *mut ffi::PyObject, b: *mut ffi::PyObject) -> PyResult<bool> {
    unsafe {
        if let Some(less) = entry_lt(a, b) {
            return Ok(less);
        }
        // anything else: Python's own comparison (the items held while it runs)
        ffi::Py_INCREF(a);
        ffi::Py_INCREF(b);
        let r = ffi::PyObject_RichCompareBool(a, b, ffi::Py_LT);
        ffi::Py_DECREF(a);
        ffi::Py_DECREF(b);
        if r < 0 {
            return Err(PyErr::fetch(py));
        }
        Ok(r == 1)
    }
}

fn items(heap: &Bound<'_, PyList>) -> *mut *mut ffi::PyObject {
    unsafe { (*(heap.as_ptr() as *mut ffi::PyListObject)).ob_item }
}

fn changed() -> PyErr {
    PyRuntimeError::new_err("list changed size during iteration")
}

/// `_siftdown(heap, startpos, pos)`.
fn siftdown(py: Python<'_>, heap: &Bound<'_, PyList>, startpos: usize, mut pos: usize) -> PyResult<()> {
    let size = heap.len();
    while pos > startpos {
        let parentpos = (pos - 1) >> 1;
        let (newitem, parent) = unsafe { (*items(heap).add(pos), *items(heap).add(parentpos)) };
        let less = lt(py, newitem, parent)?;
        if heap.len() != size {
            return Err(changed());
        }
        if !less {
            break;
        }
        unsafe { std::ptr::swap(items(heap).add(parentpos), items(heap).add(pos)) };
        pos = parentpos;
    }
    Ok(())
}

/// `_siftup(heap, pos)`.
fn siftup(py: Python<'_>, heap: &Bound<'_, PyList>, mut pos: usize) -> PyResult<()> {
    let endpos = heap.len();
    let startpos = pos;
    let limit = endpos >> 1;
    while pos < limit {
        let mut childpos = 2 * pos + 1;
        if childpos + 1 < endpos {
            let (a, b) = unsafe { (*items(heap).add(childpos), *items(heap).add(childpos + 1)) };
            let less = lt(py, a, b)?;
            if heap.len() != endpos {
                return Err(changed());
            }
            if !less {
                childpos += 1;
            }
        }
        unsafe { std::ptr::swap(items(heap).add(childpos), items(heap).add(pos)) };
        pos = childpos;
    }
    siftdown(py, heap, startpos, pos)
}

/// `heapq.heappush(heap, item)`.
pub(crate) fn heappush(heap: &Bound<'_, PyList>, item: &Bound<'_, PyAny>) -> PyResult<()> {
    heap.append(item)?;
    siftdown(heap.py(), heap, 0, heap.len() - 1)
}

/// `heapq.heappop(heap)`.
pub(crate) fn heappop<'py>(heap: &Bound<'py, PyList>) -> PyResult<Bound<'py, PyAny>> {
    let n = heap.len();
    if n == 0 {
        return Err(PyIndexError::new_err("index out of range"));
    }
    let last = heap.get_item(n - 1)?;
    heap.del_item(n - 1)?;
    if n == 1 {
        return Ok(last);
    }
    let top = heap.get_item(0)?;
    heap.set_item(0, last)?;
    siftup(heap.py(), heap, 0)?;
    Ok(top)
}
