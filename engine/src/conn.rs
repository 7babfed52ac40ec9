//! Connection ids with generations, and the slot table that hands them out.
//!
//! A slot is reused after its connection closes; the generation in [`ConnId`] makes an id that outlived its
//! connection refer to nothing instead of to the slot's next occupant.

use std::fmt;

/// Identifies one client or backend connection for its whole life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    index: u32,
    generation: u32,
}

impl ConnId {
    /// The slot index: small, dense, reused; a runtime can use it to index its own socket table.
    pub fn index(self) -> usize {
        self.index as usize
    }

    /// The slot's generation when this id was issued.
    pub fn generation(self) -> u32 {
        self.generation
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}.{}", self.index, self.generation)
    }
}

struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

/// A slab of connection states addressed by [`ConnId`].
pub(crate) struct ConnTable<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
}

impl<T> ConnTable<T> {
    pub(crate) fn new() -> Self {
        ConnTable { slots: Vec::new(), free: Vec::new() }
    }

    pub(crate) fn insert(&mut self, value: T) -> ConnId {
        if let Some(index) = self.free.pop() {
            let slot = &mut self.slots[index as usize];
            slot.generation = slot.generation.wrapping_add(1);
            slot.value = Some(value);
            ConnId { index, generation: slot.generation }
        } else {
            let index = u32::try_from(self.slots.len()).expect("fewer than 2^32 connections");
            self.slots.push(Slot { generation: 0, value: Some(value) });
            ConnId { index, generation: 0 }
        }
    }

    pub(crate) fn get(&self, id: ConnId) -> Option<&T> {
        self.slots.get(id.index()).filter(|s| s.generation == id.generation).and_then(|s| s.value.as_ref())
    }

    pub(crate) fn get_mut(&mut self, id: ConnId) -> Option<&mut T> {
        self.slots.get_mut(id.index()).filter(|s| s.generation == id.generation).and_then(|s| s.value.as_mut())
    }

    pub(crate) fn remove(&mut self, id: ConnId) -> Option<T> {
        let slot = self.slots.get_mut(id.index()).filter(|s| s.generation == id.generation)?;
        let value = slot.value.take()?;
        self.free.push(id.index);
        Some(value)
    }

    /// Ids of every live entry, in slot order (deterministic).
    pub(crate) fn ids(&self) -> Vec<ConnId> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.value.is_some())
            .map(|(i, s)| ConnId { index: i as u32, generation: s.generation })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_ids_find_nothing() {
        let mut table = ConnTable::new();
        let a = table.insert("a");
        assert_eq!(table.remove(a), Some("a"));
        let b = table.insert("b");
        assert_eq!(a.index(), b.index());
        assert_eq!(table.get(a), None);
        assert_eq!(table.get(b), Some(&"b"));
        assert_eq!(table.remove(a), None);
    }
}
