//! Per-customer values in the insertion order of the Python dict they stand for: the open
//! attribution paths (`paths.rs`) and each funnel's open runs (`funnels.rs`). A value set again
//! keeps its place; a removed one leaves a hole, and the holes are dropped (order kept) once they
//! outnumber the values.

use crate::{FxMap, PStr};

/// A value that knows its customer.
pub(crate) trait Keyed {
    fn cid(&self) -> &PStr;
}

pub(crate) struct Ordered<T> {
    index: FxMap<Box<str>, usize>,
    entries: Vec<Option<T>>, // in insertion order; None: removed
    n_open: usize,
}

impl<T: Keyed> Ordered<T> {
    pub(crate) fn new() -> Self {
        Ordered { index: FxMap::default(), entries: Vec::new(), n_open: 0 }
    }

    /// The position of `cid`'s value, for `at` and `at_mut`.
    pub(crate) fn find(&self, cid: &str) -> Option<usize> {
        self.index.get(cid).copied()
    }

    pub(crate) fn at(&self, i: usize) -> &T {
        self.entries[i].as_ref().unwrap()
    }

    pub(crate) fn at_mut(&mut self, i: usize) -> &mut T {
        self.entries[i].as_mut().unwrap()
    }

    /// Set `cid`'s value: in its place when there is one, else last.
    pub(crate) fn put(&mut self, cid: &str, value: T) {
        match self.index.get(cid) {
            Some(&i) => self.entries[i] = Some(value),
            None => {
                self.index.insert(cid.into(), self.entries.len());
                self.entries.push(Some(value));
                self.n_open += 1;
            }
        }
    }

    pub(crate) fn remove(&mut self, cid: &str) -> Option<T> {
        let i = self.index.remove(cid)?;
        let e = self.entries[i].take();
        self.n_open -= 1;
        if self.entries.len() > 64 && self.entries.len() > 2 * self.n_open {
            // drop the holes, keeping the order
            let kept: Vec<Option<T>> = self.entries.drain(..).filter(|e| e.is_some()).collect();
            self.entries = kept;
            for (j, e) in self.entries.iter().enumerate() {
                if let Some(e) = e {
                    *self.index.get_mut(e.cid().text()).unwrap() = j;
                }
            }
        }
        e
    }

    /// The values, in insertion order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().flatten()
    }

    pub(crate) fn len(&self) -> usize {
        self.n_open
    }

    pub(crate) fn contains(&self, cid: &str) -> bool {
        self.index.contains_key(cid)
    }
}
