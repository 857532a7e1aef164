//! `PathAccumulator.add` (`processors/attribution.py`), the attribution paths' per-event loop,
//! over the same Python state (issue 4).
//!
//! The open journeys (`open`: customer -> `(last ts, touchpoints, channels)`) and the finished
//! paths (`done[level]`: steps tuple -> `[conversions, value, nulls]`) stay the accumulator's
//! Python dicts, lists and tuples, changed here by the same operations in the same order as the
//! Python loop: the same keys in the same insertion order, the same objects appended, the same
//! Python additions on the outcome slots. So the state, its pickles and everything that reads
//! `open` directly (the chain's detach, attach and forget) are unchanged; only the interpreter's
//! per-event work goes.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyFrozenSet, PyList, PyString, PyTuple};

use crate::{dict_or_attr, instance_dict, slot_offset, slot_or_attr, EvLayout};

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
}

fn slot_names(py: Python<'_>) -> [&Bound<'_, PyString>; 4] {
    [intern!(py, "customer_id"), intern!(py, "event"), intern!(py, "segment"), intern!(py, "ts_ms")]
}

/// `PathAccumulator.add`'s loop: one per accumulator (it keeps the event type's layout).
#[pyclass(module = "journeymap_journeys")]
pub struct NativePathAdder {
    slots: EventSlots,
}

/// `_close`: count one finished path at both levels (nothing for an empty path).
fn close(
    py: Python<'_>,
    done: [&Bound<'_, PyDict>; 2],
    steps: [&Bound<'_, PyList>; 2],
    slot: usize,
    value: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    if steps[0].is_empty() {
        return Ok(());
    }
    for (d, s) in done.iter().zip(steps.iter()) {
        let key = PyTuple::new_bound(py, s.iter());
        let acc = match d.get_item(&key)? {
            Some(a) => a,
            // `done[level][key]` on a missing key: the defaultdict's own factory makes the slots
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

#[pymethods]
impl NativePathAdder {
    #[new]
    fn new() -> Self {
        NativePathAdder { slots: EventSlots::new() }
    }

    /// Add `events` (event-time order per customer) to `open` and `done_tp`/`done_ch` (the
    /// accumulator's `open` and `done["touchpoint"]`/`done["channel"]`), as
    /// `PathAccumulator.add` does.
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        py: Python<'_>,
        events: &Bound<'_, PyAny>,
        open: &Bound<'_, PyDict>,
        done_tp: &Bound<'_, PyDict>,
        done_ch: &Bound<'_, PyDict>,
        conversion: &Bound<'_, PyFrozenSet>,
        churn: &Bound<'_, PyFrozenSet>,
        horizon_ms: i64,
    ) -> PyResult<()> {
        let n_touchpoint = intern!(py, "touchpoint");
        let n_channel = intern!(py, "channel");
        let n_revenue = intern!(py, "revenue");
        let done = [done_tp, done_ch];
        let zero = PyFloat::new_bound(py, 0.0).into_any();
        for ev in events.iter()? {
            let ev = ev?;
            self.slots.learn(&ev);
            let cid = self.slots.get(&ev, CUSTOMER_ID)?;
            let te = self.slots.get(&ev, EVENT)?;
            let ts_obj = self.slots.get(&ev, TS_MS)?;
            let ts: i64 = ts_obj.extract()?;
            let td = instance_dict(&te);
            let tp = dict_or_attr(&te, td, n_touchpoint)?;
            let mut lists: Option<[Bound<'_, PyList>; 2]> = None;
            if let Some(last) = open.get_item(&cid)? {
                let last = last.downcast_into::<PyTuple>()?;
                let last_ts: i64 = last.get_item(0)?.extract()?;
                let tps = last.get_item(1)?.downcast_into::<PyList>()?;
                let chs = last.get_item(2)?.downcast_into::<PyList>()?;
                if ts - last_ts >= horizon_ms {
                    close(py, done, [&tps, &chs], 2, None)?;
                } else {
                    lists = Some([tps, chs]);
                }
            }
            let [tps, chs] = match lists {
                Some(l) => l,
                None => [PyList::empty_bound(py), PyList::empty_bound(py)],
            };
            let (tps, chs) = if conversion.contains(&tp)? {
                let rev = dict_or_attr(&te, td, n_revenue)?;
                let value = if rev.is_truthy()? { rev } else { zero.clone() };
                close(py, done, [&tps, &chs], 0, Some(&value))?;
                (PyList::empty_bound(py), PyList::empty_bound(py))
            } else if churn.contains(&tp)? {
                close(py, done, [&tps, &chs], 2, None)?;
                (PyList::empty_bound(py), PyList::empty_bound(py))
            } else {
                tps.append(&tp)?;
                chs.append(dict_or_attr(&te, td, n_channel)?)?;
                (tps, chs)
            };
            open.set_item(cid, PyTuple::new_bound(py, [ts_obj.into_any(), tps.into_any(), chs.into_any()]))?;
        }
        Ok(())
    }
}
