//! The slot map: which shard serves each of the 16,384 slots, each shard a primary with its replicas and the
//! config epoch of its claim.

use crate::address::ServerAddress;
use crate::cluster_nodes::NodeEntry;
use crate::server_id::ServerId;
use crate::slot::SLOTS;
use smallvec::SmallVec;

/// A primary and its replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Shard {
    /// The node that serves the shard's slots.
    pub(crate) primary: ServerId,
    /// Its replicas, as the cluster lists them.
    pub(crate) replicas: SmallVec<[ServerId; 2]>,
    /// The primary's config epoch (0: learnt from a `MOVED`, which carries none).
    pub(crate) epoch: u64,
    /// The cluster agreed the primary failed: its slots wait for a replica to be promoted.
    pub(crate) failed: bool,
}

/// Marks a slot no shard serves.
const UNSERVED: u16 = u16::MAX;

/// Slot to shard, flat, so that routing is one index and one load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SlotMap {
    /// The shard index of every slot, or [`UNSERVED`].
    owners: Box<[u16]>,
    shards: Vec<Shard>,
}

impl Default for SlotMap {
    fn default() -> SlotMap {
        SlotMap { owners: vec![UNSERVED; SLOTS].into_boxed_slice(), shards: Vec::new() }
    }
}

impl SlotMap {
    /// The map `nodes` describe; `id_of` names the server at an address (every node's address has one). Nodes
    /// without an address, and replicas of primaries the list lacks, are left out.
    pub(crate) fn from_nodes(nodes: &[NodeEntry], id_of: impl Fn(&ServerAddress) -> Option<ServerId>) -> SlotMap {
        let mut map = SlotMap::default();
        // In slot order, replicas sorted: every node lists the nodes in its own order, and two nodes that agree
        // must give equal maps.
        let mut primaries: Vec<&NodeEntry> = nodes.iter().filter(|n| n.primary && !n.slots.is_empty()).collect();
        primaries.sort_by_key(|n| n.slots.iter().map(|(first, _)| *first).min());
        for node in primaries {
            let Some(primary) = node.address.as_ref().and_then(&id_of) else { continue };
            let mut replicas: SmallVec<[ServerId; 2]> = nodes
                .iter()
                .filter(|r| !r.primary && r.primary_id.as_deref() == Some(node.id.as_str()) && !r.failed)
                .filter_map(|r| r.address.as_ref().and_then(&id_of))
                .collect();
            replicas.sort_unstable();
            let index = map.shards.len() as u16;
            map.shards.push(Shard { primary, replicas, epoch: node.config_epoch, failed: node.failed });
            for &(first, last) in &node.slots {
                for slot in first..=last {
                    map.owners[usize::from(slot)] = index;
                }
            }
        }
        map
    }

    /// The shard that serves `slot`, if one does.
    #[inline]
    pub(crate) fn shard_of(&self, slot: u16) -> Option<&Shard> {
        let index = *self.owners.get(usize::from(slot))?;
        self.shards.get(usize::from(index))
    }

    /// The shards, in no particular order.
    pub(crate) fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// How many slots some shard serves.
    pub(crate) fn served_slots(&self) -> usize {
        self.owners.iter().filter(|&&o| o != UNSERVED).count()
    }

    /// A slot this map gives to a primary with a lower config epoch than `current` does: then this map is
    /// older (it comes from a node that has not heard of a failover or a migration yet) and must not replace it.
    pub(crate) fn older_slot_than(&self, current: &SlotMap) -> Option<u16> {
        (0..SLOTS as u16).find(|&slot| match (self.shard_of(slot), current.shard_of(slot)) {
            (Some(new), Some(old)) => new.epoch < old.epoch,
            _ => false,
        })
    }

    /// Points `slot` at `primary`, as a `MOVED` says: at the shard `primary` leads, or at a new one.
    pub(crate) fn point(&mut self, slot: u16, primary: ServerId) {
        let index = match self.shards.iter().position(|s| s.primary == primary) {
            Some(index) => index,
            None => {
                let shard = Shard { primary, replicas: SmallVec::new(), epoch: 0, failed: false };
                self.shards.push(shard);
                self.shards.len() - 1
            }
        };
        if let Some(owner) = self.owners.get_mut(usize::from(slot)) {
            *owner = index as u16;
        }
    }

    /// The first slot the shard led by `primary` serves.
    pub(crate) fn first_slot_of(&self, primary: ServerId) -> Option<usize> {
        let index = self.shards.iter().position(|s| s.primary == primary)? as u16;
        self.owners.iter().position(|&o| o == index)
    }

    /// How many slots each shard serves, by shard index.
    pub(crate) fn slots_per_shard(&self) -> Vec<usize> {
        let mut counts = vec![0; self.shards.len()];
        for &owner in self.owners.iter().filter(|&&o| o != UNSERVED) {
            if let Some(count) = counts.get_mut(usize::from(owner)) {
                *count += 1;
            }
        }
        counts
    }

    /// Whether `server` is named in the map (a primary or a replica).
    pub(crate) fn names(&self, server: ServerId) -> bool {
        self.shards.iter().any(|s| s.primary == server || s.replicas.contains(&server))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster_nodes::parse_nodes;
    use crate::server_id::ServerTable;

    fn address(port: u16) -> ServerAddress {
        ServerAddress { host: "127.0.0.1".into(), port }
    }

    /// Ids for ports 7000.. in order.
    fn ids() -> (ServerTable<u16>, impl Fn(&ServerAddress) -> Option<ServerId>) {
        let mut table = ServerTable::default();
        let list: Vec<(u16, ServerId)> = (7000..7006)
            .map(|p| {
                let id = table.vacant_id();
                table.insert(id, p);
                (p, id)
            })
            .collect();
        (table, move |a: &ServerAddress| list.iter().find(|(p, _)| *p == a.port).map(|(_, id)| *id))
    }

    fn nodes(epochs: [u64; 3]) -> Vec<NodeEntry> {
        let text = format!(
            "a 127.0.0.1:7000@1 master - 0 0 {} connected 0-5460\n\
             b 127.0.0.1:7001@1 master - 0 0 {} connected 5461-10922\n\
             c 127.0.0.1:7002@1 master - 0 0 {} connected 10923-16383\n\
             d 127.0.0.1:7003@1 slave a 0 0 {} connected\n",
            epochs[0], epochs[1], epochs[2], epochs[0]
        );
        parse_nodes(text.as_bytes(), &address(7000)).expect("valid")
    }

    #[test]
    fn every_slot_points_at_its_primary() {
        let (_table, id_of) = ids();
        let map = SlotMap::from_nodes(&nodes([1, 2, 3]), &id_of);
        assert_eq!(map.served_slots(), SLOTS);
        assert_eq!(map.shard_of(0).map(|s| s.primary), id_of(&address(7000)));
        assert_eq!(map.shard_of(5461).map(|s| s.primary), id_of(&address(7001)));
        assert_eq!(map.shard_of(16383).map(|s| s.primary), id_of(&address(7002)));
        assert_eq!(map.shard_of(0).map(|s| s.replicas.to_vec()), Some(vec![id_of(&address(7003)).unwrap()]));
        assert!(map.shard_of(16384).is_none());
    }

    #[test]
    fn nodes_listed_in_another_order_give_an_equal_map() {
        let (_table, id_of) = ids();
        let mut shuffled = nodes([1, 2, 3]);
        shuffled.reverse();
        assert_eq!(SlotMap::from_nodes(&shuffled, &id_of), SlotMap::from_nodes(&nodes([1, 2, 3]), &id_of));
    }

    #[test]
    fn a_map_with_a_lower_epoch_for_a_slot_is_older() {
        let (_table, id_of) = ids();
        let current = SlotMap::from_nodes(&nodes([1, 7, 3]), &id_of);
        assert_eq!(SlotMap::from_nodes(&nodes([1, 2, 3]), &id_of).older_slot_than(&current), Some(5461));
        assert_eq!(SlotMap::from_nodes(&nodes([1, 7, 4]), &id_of).older_slot_than(&current), None);
    }

    #[test]
    fn moved_points_one_slot() {
        let (_table, id_of) = ids();
        let mut map = SlotMap::from_nodes(&nodes([1, 2, 3]), &id_of);
        let b = id_of(&address(7001)).unwrap();
        map.point(42, b);
        assert_eq!(map.shard_of(42).map(|s| s.primary), Some(b));
        assert_eq!(map.shard_of(43).map(|s| s.primary), id_of(&address(7000)));
        let newcomer = id_of(&address(7005)).unwrap();
        map.point(43, newcomer);
        assert_eq!(map.shard_of(43).map(|s| (s.primary, s.epoch)), Some((newcomer, 0)));
        assert!(map.names(newcomer));
    }
}
