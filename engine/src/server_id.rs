//! Server identities that never shift, and the tables keyed by them.
//!
//! A [`ServerId`] is a slot and a generation, as a [`crate::ConnId`] is: removing a server empties its slot and
//! moves no other server, and a slot reused by a server added later carries a new generation. So an id kept
//! across inputs (a `SCAN` cursor's server, the master history, a switchover's target) finds its server while it
//! is watched and nothing once it is gone: every lookup returns `Option`, and no id ever names the wrong server.

use std::fmt;

/// Identifies one watched server for as long as it is watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ServerId {
    slot: u32,
    generation: u32,
}

impl ServerId {
    /// The slot: small and dense, reused after a server is removed (with a new generation).
    pub(crate) fn slot(self) -> usize {
        self.slot as usize
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "server {}.{}", self.slot, self.generation)
    }
}

#[derive(Clone, Debug)]
struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

/// Per-server state addressed by [`ServerId`]. One table (the monitor's) hands out ids with
/// [`ServerTable::vacant_id`]; the others store their state under the same ids with [`ServerTable::insert`].
#[derive(Clone, Debug)]
pub(crate) struct ServerTable<T> {
    slots: Vec<Slot<T>>,
}

impl<T> Default for ServerTable<T> {
    fn default() -> Self {
        ServerTable { slots: Vec::new() }
    }
}

impl<T> ServerTable<T> {
    /// The id the next server added gets: the first empty slot with its next generation, or a new slot.
    pub(crate) fn vacant_id(&self) -> ServerId {
        match self.slots.iter().position(|s| s.value.is_none()) {
            Some(slot) => ServerId { slot: slot as u32, generation: self.slots[slot].generation.wrapping_add(1) },
            None => ServerId { slot: self.slots.len() as u32, generation: 0 },
        }
    }

    /// Stores `value` under `id` (replacing whatever its slot held).
    pub(crate) fn insert(&mut self, id: ServerId, value: T) {
        let slot = id.slot();
        if self.slots.len() <= slot {
            self.slots.resize_with(slot + 1, || Slot { generation: 0, value: None });
        }
        self.slots[slot] = Slot { generation: id.generation, value: Some(value) };
    }

    /// Forgets `id`; its slot stays empty until a server is added.
    pub(crate) fn remove(&mut self, id: ServerId) -> Option<T> {
        let slot = self.slots.get_mut(id.slot()).filter(|s| s.generation == id.generation)?;
        slot.value.take()
    }

    /// The state of `id`, None once it is gone.
    #[inline]
    pub(crate) fn get(&self, id: ServerId) -> Option<&T> {
        self.slots.get(id.slot()).filter(|s| s.generation == id.generation).and_then(|s| s.value.as_ref())
    }

    /// The state of `id`, mutable.
    #[inline]
    pub(crate) fn get_mut(&mut self, id: ServerId) -> Option<&mut T> {
        self.slots.get_mut(id.slot()).filter(|s| s.generation == id.generation).and_then(|s| s.value.as_mut())
    }

    /// Whether `id` names a server in the table.
    pub(crate) fn contains(&self, id: ServerId) -> bool {
        self.get(id).is_some()
    }

    /// Every server with its id, in slot order (deterministic).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (ServerId, &T)> + '_ {
        self.slots.iter().enumerate().filter_map(|(slot, s)| {
            s.value.as_ref().map(|v| (ServerId { slot: slot as u32, generation: s.generation }, v))
        })
    }

    /// Every server with its id, mutable, in slot order (the tests set up views with it).
    #[cfg(test)]
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (ServerId, &mut T)> + '_ {
        self.slots.iter_mut().enumerate().filter_map(|(slot, s)| {
            let generation = s.generation;
            s.value.as_mut().map(|v| (ServerId { slot: slot as u32, generation }, v))
        })
    }

    /// Every server's state, in slot order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &T> + '_ {
        self.slots.iter().filter_map(|s| s.value.as_ref())
    }

    /// Every id, in slot order.
    pub(crate) fn ids(&self) -> Vec<ServerId> {
        self.iter().map(|(id, _)| id).collect()
    }

    /// The number of slots, empty ones included: slot indexes are below it.
    pub(crate) fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// The server in `slot` now, if any.
    pub(crate) fn id_in_slot(&self, slot: usize) -> Option<ServerId> {
        let s = self.slots.get(slot)?;
        s.value.as_ref().map(|_| ServerId { slot: slot as u32, generation: s.generation })
    }
}

#[cfg(test)]
impl ServerId {
    /// The id of the server in `slot` of a table collected from a list (generation 0), for tests.
    pub(crate) fn first(slot: usize) -> ServerId {
        ServerId { slot: slot as u32, generation: 0 }
    }
}

/// Tests index a table collected from a list by position.
#[cfg(test)]
impl<T> std::ops::Index<usize> for ServerTable<T> {
    type Output = T;
    fn index(&self, slot: usize) -> &T {
        self.slots[slot].value.as_ref().expect("a server in that slot")
    }
}

#[cfg(test)]
impl<T> std::ops::IndexMut<usize> for ServerTable<T> {
    fn index_mut(&mut self, slot: usize) -> &mut T {
        self.slots[slot].value.as_mut().expect("a server in that slot")
    }
}

impl<T> FromIterator<T> for ServerTable<T> {
    fn from_iter<I: IntoIterator<Item = T>>(values: I) -> Self {
        ServerTable { slots: values.into_iter().map(|value| Slot { generation: 0, value: Some(value) }).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removing_a_server_moves_no_other_and_a_stale_id_finds_nothing() {
        let mut table: ServerTable<&str> = ["a", "b", "c"].into_iter().collect();
        let ids = table.ids();
        assert_eq!(table.remove(ids[0]), Some("a"));
        assert_eq!(table.get(ids[1]), Some(&"b"), "b keeps its id");
        assert_eq!(table.get(ids[2]), Some(&"c"));
        assert_eq!(table.get(ids[0]), None);
        let d = table.vacant_id();
        table.insert(d, "d");
        assert_eq!(d.slot(), ids[0].slot(), "the empty slot is reused");
        assert_ne!(d, ids[0], "with a new generation");
        assert_eq!(table.get(ids[0]), None, "the removed server's id does not find its successor");
        assert_eq!(table.remove(ids[0]), None);
        assert_eq!(table.values().count(), 3);
        assert_eq!(table.values().copied().collect::<Vec<_>>(), ["d", "b", "c"]);
    }

    #[test]
    fn tables_share_ids() {
        let mut views: ServerTable<&str> = ServerTable::default();
        let mut conns: ServerTable<u32> = ServerTable::default();
        let a = views.vacant_id();
        views.insert(a, "a");
        conns.insert(a, 1);
        let b = views.vacant_id();
        views.insert(b, "b");
        conns.insert(b, 2);
        views.remove(a);
        conns.remove(a);
        let c = views.vacant_id();
        views.insert(c, "c");
        conns.insert(c, 3);
        assert_eq!(conns.get(c), Some(&3));
        assert_eq!(conns.get(a), None);
        assert_eq!(views.iter().map(|(id, v)| (id, *v)).collect::<Vec<_>>(), [(c, "c"), (b, "b")]);
        assert_eq!(views.id_in_slot(c.slot()), Some(c));
        assert_eq!(views.id_in_slot(7), None);
    }
}
