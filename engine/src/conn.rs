//! Connection ids with generations, and the slot tables that hand them out.
//!
//! Clients and backend connections live in two tables (owned by the `client` and `pool` machines) that share one
//! id space: a table hands out every second index, starting at its [`Lane`], so a runtime can index one socket
//! table by [`ConnId::index`] and the engine can tell a client's id from a backend's without a lookup. A slot is
//! reused after its connection closes; the generation in [`ConnId`] makes an id that outlived its connection
//! refer to nothing instead of to the slot's next occupant.

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

    /// Which table issued it.
    pub(crate) fn lane(self) -> Lane {
        if self.index & 1 == 0 {
            Lane::Client
        } else {
            Lane::Backend
        }
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}.{}", self.index, self.generation)
    }
}

/// The half of the id space a table hands out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Even indexes: client connections.
    Client = 0,
    /// Odd indexes: backend connections.
    Backend = 1,
}

struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

/// A slab of connection states addressed by [`ConnId`], handing out the ids of one [`Lane`].
pub(crate) struct ConnTable<T> {
    lane: Lane,
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
}

impl<T> ConnTable<T> {
    pub(crate) fn new(lane: Lane) -> Self {
        ConnTable { lane, slots: Vec::new(), free: Vec::new() }
    }

    fn id(&self, slot: u32, generation: u32) -> ConnId {
        ConnId { index: slot * 2 + self.lane as u32, generation }
    }

    fn slot(&self, id: ConnId) -> Option<&Slot<T>> {
        if id.lane() != self.lane {
            return None;
        }
        self.slots.get(id.index() / 2).filter(|s| s.generation == id.generation)
    }

    pub(crate) fn insert(&mut self, value: T) -> ConnId {
        if let Some(slot) = self.free.pop() {
            let entry = &mut self.slots[slot as usize];
            entry.generation = entry.generation.wrapping_add(1);
            entry.value = Some(value);
            let generation = entry.generation;
            self.id(slot, generation)
        } else {
            let slot = u32::try_from(self.slots.len())
                .ok()
                .filter(|s| *s < u32::MAX / 2)
                .expect("fewer than 2^31 connections");
            self.slots.push(Slot { generation: 0, value: Some(value) });
            self.id(slot, 0)
        }
    }

    pub(crate) fn get(&self, id: ConnId) -> Option<&T> {
        self.slot(id).and_then(|s| s.value.as_ref())
    }

    pub(crate) fn get_mut(&mut self, id: ConnId) -> Option<&mut T> {
        if id.lane() != self.lane {
            return None;
        }
        self.slots.get_mut(id.index() / 2).filter(|s| s.generation == id.generation).and_then(|s| s.value.as_mut())
    }

    pub(crate) fn remove(&mut self, id: ConnId) -> Option<T> {
        if id.lane() != self.lane {
            return None;
        }
        let slot = self.slots.get_mut(id.index() / 2).filter(|s| s.generation == id.generation)?;
        let value = slot.value.take()?;
        self.free.push((id.index() / 2) as u32);
        Some(value)
    }

    /// Ids of every live entry, in slot order (deterministic).
    pub(crate) fn ids(&self) -> Vec<ConnId> {
        self.iter().map(|(id, _)| id).collect()
    }

    /// Every live entry with its id, in slot order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (ConnId, &T)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.value.as_ref().map(|v| (self.id(i as u32, s.generation), v)))
    }
}

/// A client id and a backend id, for tests of machines that pair the two.
#[cfg(test)]
pub(crate) fn client_and_backend_ids() -> (ConnId, ConnId) {
    let mut clients = ConnTable::new(Lane::Client);
    let mut backends = ConnTable::new(Lane::Backend);
    (clients.insert(()), backends.insert(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_ids_find_nothing() {
        let mut table = ConnTable::new(Lane::Backend);
        let a = table.insert("a");
        assert_eq!(table.remove(a), Some("a"));
        let b = table.insert("b");
        assert_eq!(a.index(), b.index());
        assert_eq!(table.get(a), None);
        assert_eq!(table.get(b), Some(&"b"));
        assert_eq!(table.remove(a), None);
    }

    #[test]
    fn lanes_share_one_id_space_without_overlap() {
        let mut clients = ConnTable::new(Lane::Client);
        let mut backends = ConnTable::new(Lane::Backend);
        let c = clients.insert(1);
        let b = backends.insert(2);
        assert_ne!(c.index(), b.index());
        assert_eq!((c.lane(), b.lane()), (Lane::Client, Lane::Backend));
        assert_eq!(clients.get(b), None, "a backend's id finds nothing among clients");
        assert_eq!(backends.get(c), None);
    }
}
