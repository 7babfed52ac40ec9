//! Cluster mode's memory of where each client wrote: the primaries its writes went to, so that its `WAIT` counts
//! the replicas of each of them (the fewest is the answer), as Redis counts the replicas of the one node a
//! connection writes to.

use crate::conn::ConnId;
use crate::server_id::ServerId;
use smallvec::SmallVec;
use std::collections::HashMap;

/// The primaries a client wrote to; a cluster has few, and a client usually writes to some of them.
pub(crate) type Written = SmallVec<[ServerId; 4]>;

/// The primaries each client wrote to since it connected.
#[derive(Debug, Default)]
pub(crate) struct Writes {
    by_client: HashMap<ConnId, Written>,
}

impl Writes {
    /// `client` sent a request that may write to `primary`.
    pub(crate) fn wrote(&mut self, client: ConnId, primary: ServerId) {
        let written = self.by_client.entry(client).or_default();
        if !written.contains(&primary) {
            written.push(primary);
        }
    }

    /// The primaries `client` wrote to (empty: none).
    pub(crate) fn of(&self, client: ConnId) -> Written {
        self.by_client.get(&client).cloned().unwrap_or_default()
    }

    /// Forgets the clients that are gone (`connected` says which remain) once they could outnumber the `clients`
    /// connected now: a pass over every entry, so not on every tick.
    pub(crate) fn tidy(&mut self, clients: usize, mut connected: impl FnMut(ConnId) -> bool) {
        if self.by_client.len() > 2 * clients + 64 {
            self.by_client.retain(|client, _| connected(*client));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::{ConnTable, Lane};
    use crate::server_id::ServerTable;

    #[test]
    fn each_primary_is_kept_once_and_departed_clients_are_forgotten() {
        let mut clients = ConnTable::new(Lane::Client);
        let (a, b) = (clients.insert(()), clients.insert(()));
        let mut servers = ServerTable::default();
        let first = servers.vacant_id();
        servers.insert(first, ());
        let second = servers.vacant_id();
        let mut writes = Writes::default();
        writes.wrote(a, first);
        writes.wrote(a, second);
        writes.wrote(a, first);
        assert_eq!(writes.of(a).as_slice(), &[first, second]);
        assert!(writes.of(b).is_empty());
        writes.tidy(1, |c| c == b);
        assert_eq!(writes.of(a).len(), 2, "kept while few clients are gone");
        let gone: Vec<ConnId> = (0..200).map(|_| clients.insert(())).collect();
        for client in &gone {
            writes.wrote(*client, first);
        }
        writes.tidy(1, |c| c == b);
        assert!(writes.of(a).is_empty() && gone.iter().all(|c| writes.of(*c).is_empty()), "forgotten at last");
    }
}
