//! Cluster mode's transactions: a client's `MULTI` ... `EXEC` kept by the proxy while the client queues it, then
//! sent whole, as one batch, to the primary of its keys' slot. Redis runs a batch `MULTI` ... `EXEC` from one
//! connection atomically, so it may share a pipelined connection with other clients, and the proxy can send it
//! again elsewhere when the slot has moved (no command of it ran: queuing on the wrong node only queues errors).
//!
//! `WATCH` is the exception: Redis keeps watched keys per connection, so a client's `WATCH` goes to its keys'
//! primary on a private connection, and its transaction, held to the same slot, is sent on that connection. If
//! the slot was not where the map said (a redirection), its `EXEC` cannot be checked against the `WATCH`: it is
//! doomed, and answers null, as when a watched key changed, for the client to try again.

use crate::conn::ConnId;
use crate::key_slots::KeySlots;
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;

/// One client's transaction being queued.
#[derive(Debug, Default)]
struct Transaction {
    /// The slot of the keys queued so far (None: no key yet).
    slot: Option<u16>,
    /// The requests queued, in order.
    queued: Vec<Bytes>,
    /// Their bytes.
    bytes: usize,
    /// A command was refused while queuing: `EXEC` fails with `EXECABORT`, as Redis does.
    aborted: bool,
}

/// What queuing one request said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Queued {
    /// Queued (`+QUEUED`).
    Queued,
    /// Refused with this error; the transaction will fail at `EXEC`.
    Refused(&'static str),
}

/// What `EXEC` sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Batch {
    /// `EXEC` without `MULTI`.
    NoTransaction,
    /// A command was refused while queuing.
    Aborted,
    /// Nothing was queued: the reply is an empty array.
    Empty,
    /// `MULTI`, the queued requests and `EXEC`, to the primary of `slot` (None: any primary); `queued` requests.
    Send { slot: Option<u16>, data: Bytes, queued: usize },
}

/// A client's `WATCH`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Watch {
    /// The slot of the watched keys.
    pub(crate) slot: u16,
    /// A `WATCH` met a redirection: the `EXEC` answers null without running.
    pub(crate) doomed: bool,
}

/// The transactions being queued, by client, and the clients' `WATCH`es.
#[derive(Debug, Default)]
pub(crate) struct Transactions {
    open: HashMap<ConnId, Transaction>,
    watches: HashMap<ConnId, Watch>,
}

const MULTI: &[u8] = b"*1\r\n$5\r\nMULTI\r\n";
const EXEC: &[u8] = b"*1\r\n$4\r\nEXEC\r\n";

impl Transactions {
    /// `MULTI` from `client`: false when it is already queuing one (Redis refuses nested `MULTI`).
    pub(crate) fn begin(&mut self, client: ConnId) -> bool {
        if self.open.contains_key(&client) {
            return false;
        }
        let slot = self.watches.get(&client).map(|w| w.slot);
        self.open.insert(client, Transaction { slot, ..Transaction::default() });
        true
    }

    /// `WATCH` of keys in `slot` by `client`: refused when it watches keys of another slot already (Redis Cluster
    /// refuses keys of several slots in one `WATCH` alike).
    pub(crate) fn watch(&mut self, client: ConnId, slot: u16) -> Result<(), &'static str> {
        let watch = self.watches.entry(client).or_insert(Watch { slot, doomed: false });
        if watch.slot != slot {
            return Err("CROSSSLOT Keys in request don't hash to the same slot");
        }
        Ok(())
    }

    /// The `WATCH` of `client`, if it has one.
    pub(crate) fn watching(&self, client: ConnId) -> Option<Watch> {
        self.watches.get(&client).copied()
    }

    /// A `WATCH` of `client` met a redirection: its `EXEC` answers null.
    pub(crate) fn doom(&mut self, client: ConnId) {
        if let Some(watch) = self.watches.get_mut(&client) {
            watch.doomed = true;
        }
    }

    /// `UNWATCH`, or the end of `client`'s transaction: its `WATCH` is over.
    pub(crate) fn unwatch(&mut self, client: ConnId) -> Option<Watch> {
        self.watches.remove(&client)
    }

    /// The slot of the keys `client`'s transaction has queued so far (None: it queues none; Some(None): no key
    /// yet).
    pub(crate) fn slot_of(&self, client: ConnId) -> Option<Option<u16>> {
        self.open.get(&client).map(|t| t.slot)
    }

    /// Whether `client` is queuing a transaction.
    pub(crate) fn is_open(&self, client: ConnId) -> bool {
        self.open.contains_key(&client)
    }

    /// Queues `request` (its keys hash to `slots`) in `client`'s transaction; a transaction may hold at most
    /// `max_bytes`.
    pub(crate) fn queue(&mut self, client: ConnId, request: &Bytes, slots: KeySlots, max_bytes: usize) -> Queued {
        let Some(transaction) = self.open.get_mut(&client) else { return Queued::Queued };
        let refused = match (slots, transaction.slot) {
            (KeySlots::Cross, _) => Some("CROSSSLOT Keys in request don't hash to the same slot"),
            (KeySlots::One(slot), Some(held)) if slot != held => {
                Some("CROSSSLOT Keys in request don't hash to the same slot")
            }
            _ if transaction.bytes + request.len() > max_bytes => {
                Some("ERR redis-proxy: the transaction is larger than max_request_len")
            }
            _ => None,
        };
        if let Some(error) = refused {
            transaction.aborted = true;
            return Queued::Refused(error);
        }
        if let KeySlots::One(slot) = slots {
            transaction.slot = Some(slot);
        }
        transaction.bytes += request.len();
        transaction.queued.push(request.clone());
        Queued::Queued
    }

    /// `EXEC` from `client`: what to send, and the transaction is over.
    pub(crate) fn exec(&mut self, client: ConnId) -> Batch {
        let Some(transaction) = self.open.remove(&client) else { return Batch::NoTransaction };
        if transaction.aborted {
            return Batch::Aborted;
        }
        if transaction.queued.is_empty() {
            return Batch::Empty;
        }
        let mut data = BytesMut::with_capacity(MULTI.len() + transaction.bytes + EXEC.len());
        data.extend_from_slice(MULTI);
        for request in &transaction.queued {
            data.extend_from_slice(request);
        }
        data.extend_from_slice(EXEC);
        Batch::Send { slot: transaction.slot, data: data.freeze(), queued: transaction.queued.len() }
    }

    /// `DISCARD` from `client` (or it was aborted elsewhere): false when there was no transaction.
    pub(crate) fn discard(&mut self, client: ConnId) -> bool {
        self.open.remove(&client).is_some()
    }

    /// Forgets the transactions of clients that are gone.
    pub(crate) fn retain_clients(&mut self, mut connected: impl FnMut(ConnId) -> bool) {
        if !self.open.is_empty() {
            self.open.retain(|client, _| connected(*client));
        }
        if !self.watches.is_empty() {
            self.watches.retain(|client, _| connected(*client));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> ConnId {
        crate::conn::client_and_backend_ids().0
    }

    fn set(key: &str) -> Bytes {
        crate::resp::Request::from_args(&["SET", key, "v"]).frame().clone()
    }

    #[test]
    fn a_transaction_is_sent_whole_to_its_slot() {
        let mut transactions = Transactions::default();
        let c = client();
        assert!(transactions.begin(c));
        assert!(!transactions.begin(c), "MULTI cannot nest");
        assert_eq!(transactions.queue(c, &set("{a}1"), KeySlots::One(7), 1 << 20), Queued::Queued);
        assert_eq!(transactions.queue(c, &set("{a}2"), KeySlots::Keyless, 1 << 20), Queued::Queued);
        let Batch::Send { slot, data, queued } = transactions.exec(c) else { panic!("a batch") };
        assert_eq!((slot, queued), (Some(7), 2));
        assert!(data.starts_with(MULTI) && data.ends_with(EXEC));
        assert_eq!(transactions.exec(c), Batch::NoTransaction);
    }

    #[test]
    fn another_slot_aborts_the_transaction() {
        let mut transactions = Transactions::default();
        let c = client();
        transactions.begin(c);
        transactions.queue(c, &set("a"), KeySlots::One(1), 1 << 20);
        assert!(matches!(transactions.queue(c, &set("b"), KeySlots::One(2), 1 << 20), Queued::Refused(_)));
        assert_eq!(transactions.exec(c), Batch::Aborted);
        transactions.begin(c);
        assert!(matches!(transactions.queue(c, &set("b"), KeySlots::One(2), 4), Queued::Refused(_)));
        assert!(transactions.discard(c));
        transactions.begin(c);
        assert_eq!(transactions.exec(c), Batch::Empty);
    }

    #[test]
    fn a_watch_holds_the_transaction_to_its_slot_until_it_ends() {
        let mut transactions = Transactions::default();
        let c = client();
        assert_eq!(transactions.watch(c, 5), Ok(()));
        assert_eq!(transactions.watch(c, 5), Ok(()), "more keys of the same slot");
        assert!(transactions.watch(c, 6).is_err(), "another slot");
        transactions.begin(c);
        assert!(matches!(transactions.queue(c, &set("b"), KeySlots::One(6), 1 << 20), Queued::Refused(_)));
        transactions.discard(c);
        transactions.doom(c);
        assert_eq!(transactions.unwatch(c), Some(Watch { slot: 5, doomed: true }));
        assert_eq!(transactions.watching(c), None);
    }
}
