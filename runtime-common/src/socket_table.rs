//! The runtime's sockets, found by the index of their [`ConnId`], with the generation checked.

use redis_proxy_engine::ConnId;

/// One socket per live connection, in the slot of its [`ConnId`]'s index.
///
/// The engine reuses the index of a connection it closed for the next one, with a new generation: every lookup by
/// id checks the generation, so an action or a read meant for a connection that is gone never reaches the slot's
/// new occupant. A runtime whose poller reports by index (mio's `Token`) uses [`SocketTable::at`].
#[derive(Debug)]
pub struct SocketTable<S> {
    slots: Vec<Option<(ConnId, S)>>,
}

impl<S> Default for SocketTable<S> {
    fn default() -> Self {
        SocketTable { slots: Vec::new() }
    }
}

impl<S> SocketTable<S> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `socket` in the slot of `id` (the engine only hands out an index whose previous connection is gone).
    pub fn insert(&mut self, id: ConnId, socket: S) {
        let index = id.index();
        if self.slots.len() <= index {
            self.slots.resize_with(index + 1, || None);
        }
        self.slots[index] = Some((id, socket));
    }

    /// The socket of `id`, unless its slot is empty or belongs to another generation.
    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut S> {
        match self.slots.get_mut(id.index()) {
            Some(Some((held, socket))) if *held == id => Some(socket),
            _ => None,
        }
    }

    /// Whether `id` has a socket here.
    pub fn contains(&self, id: ConnId) -> bool {
        matches!(self.slots.get(id.index()), Some(Some((held, _))) if *held == id)
    }

    /// The connection in slot `index` and its socket, whichever generation it is.
    pub fn at(&mut self, index: usize) -> Option<(ConnId, &mut S)> {
        match self.slots.get_mut(index) {
            Some(Some((id, socket))) => Some((*id, socket)),
            _ => None,
        }
    }

    /// Takes the socket of `id` out of the table.
    pub fn remove(&mut self, id: ConnId) -> Option<S> {
        if !self.contains(id) {
            return None;
        }
        self.slots[id.index()].take().map(|(_, socket)| socket)
    }

    /// Takes every socket out of the table.
    pub fn drain(&mut self) -> impl Iterator<Item = (ConnId, S)> + '_ {
        self.slots.drain(..).flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_conns;

    #[test]
    fn an_old_generation_never_reaches_the_new_occupant() {
        let (old, new) = test_conns();
        let mut table = SocketTable::new();
        table.insert(new, "new");
        assert!(table.contains(new) && !table.contains(old));
        assert_eq!(table.get_mut(old), None);
        assert_eq!(table.remove(old), None);
        assert_eq!(table.at(new.index()).map(|(id, s)| (id, *s)), Some((new, "new")));
        assert_eq!(table.get_mut(new).copied(), Some("new"));
        assert_eq!(table.remove(new), Some("new"));
        assert_eq!(table.at(new.index()), None);
        table.insert(old, "old");
        assert_eq!(table.drain().collect::<Vec<_>>(), vec![(old, "old")]);
    }
}
