//! Requests sent into a cluster, kept until they are answered: their bytes, so that a redirection (`MOVED`,
//! `ASK`, `TRYAGAIN`, `CLUSTERDOWN`) or a connection that never opened sends them again instead of failing them;
//! the parts of a split request until every part has answered; and the resends waiting for their time.
//!
//! A backend connection's waiter names an entry by its ticket, a slot in a table with a free list, so that
//! keeping a request costs no allocation once the table has grown.

use crate::cluster_scan::Position;
use crate::conn::ConnId;
use crate::fanout::{Answer, Fanout};
use crate::redirect::Redirect;
use crate::server_id::ServerId;
use bytes::Bytes;
use std::time::Instant;

/// Where a routed request must go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Aim {
    /// To the primary that serves this slot.
    Slot(u16),
    /// To a replica of the shard that serves this slot, fit to serve reads, round robin; to its primary when none
    /// is (`readsToSlaves`).
    Replica(u16),
    /// To any primary (the request names no key).
    AnyPrimary,
    /// To this server (a part of a request every primary gets).
    Server(ServerId),
}

/// A request in a cluster, until it is answered.
#[derive(Clone, Debug)]
pub(crate) struct Routed {
    /// The client, and its reply slot (for a part: the whole request's).
    pub(crate) client: ConnId,
    pub(crate) seq: u64,
    /// The request as sent.
    pub(crate) request: Bytes,
    pub(crate) aim: Aim,
    /// The client's protocol and shared pool slot when it was sent (its connections are chosen by them).
    pub(crate) resp3: bool,
    pub(crate) shared_slot: usize,
    /// `MOVED` and `ASK` followed so far: past [`crate::cluster::MAX_REDIRECTS`] the client gets an error.
    pub(crate) redirects: u8,
    /// Resends after `TRYAGAIN`, `CLUSTERDOWN` or a connection that could not be had: the backoff grows with
    /// them (they end when `hold_ms` has passed since the request was first sent).
    pub(crate) retries: u8,
    /// When it was first sent: retries stop after `hold_ms`.
    pub(crate) since: Instant,
    /// For a part of a split request: the fan-out and the part's index in it.
    pub(crate) part: Option<(u32, usize)>,
    /// It only reads: sent again, rather than failed, when its connection breaks before the reply.
    pub(crate) read_only: bool,
    /// A transaction (`MULTI`, this many requests, `EXEC`): how many requests it queues.
    pub(crate) queued: usize,
    /// A `SCAN` of the whole cluster: where its walk was when it was sent.
    pub(crate) scan: Option<Position>,
    /// The first redirection a queued request of the transaction met: its `EXEC` then fails, and the
    /// redirection is followed instead.
    pub(crate) queued_redirect: Option<Redirect>,
    /// A `WATCH`, or the `EXEC` of a watched transaction, on the client's private connection: never sent
    /// elsewhere (see [`crate::transaction`]).
    pub(crate) watched: Option<Watched>,
}

/// What a request on a watching client's private connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Watched {
    /// The `WATCH` itself.
    Watch,
    /// The watched transaction's `MULTI` ... `EXEC`.
    Exec,
}

impl Routed {
    /// A request of `client` in reply slot `seq`, first sent at `since`, on the client's protocol and shared pool
    /// slot; not a part, not a transaction, not a `SCAN` step, no redirection or retry yet, not a read.
    pub(crate) fn new(
        client: ConnId,
        seq: u64,
        request: Bytes,
        aim: Aim,
        resp3: bool,
        shared_slot: usize,
        since: Instant,
    ) -> Routed {
        Routed {
            client,
            seq,
            request,
            aim,
            resp3,
            shared_slot,
            redirects: 0,
            retries: 0,
            since,
            part: None,
            read_only: false,
            queued: 0,
            scan: None,
            queued_redirect: None,
            watched: None,
        }
    }
}

/// Where the reply to an answered request goes: its client and reply slot, or its fan-out part; a `SCAN` step's
/// reply is rewritten first.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReplyTo {
    pub(crate) client: ConnId,
    pub(crate) seq: u64,
    pub(crate) part: Option<(u32, usize)>,
    pub(crate) scan: Option<Position>,
}

/// A resend waiting for its time: to where the map says, or (`ask`) to the node an `ASK` named.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Resend {
    pub(crate) ticket: u32,
    pub(crate) ask: Option<ServerId>,
}

/// A table with a free list: stable small ids for entries that come and go.
#[derive(Debug)]
struct Slab<T> {
    entries: Vec<Option<T>>,
    free: Vec<u32>,
}

impl<T> Default for Slab<T> {
    fn default() -> Slab<T> {
        Slab { entries: Vec::new(), free: Vec::new() }
    }
}

impl<T> Slab<T> {
    fn insert(&mut self, value: T) -> u32 {
        match self.free.pop() {
            Some(id) => {
                self.entries[id as usize] = Some(value);
                id
            }
            None => {
                self.entries.push(Some(value));
                (self.entries.len() - 1) as u32
            }
        }
    }

    fn get(&self, id: u32) -> Option<&T> {
        self.entries.get(id as usize)?.as_ref()
    }

    fn get_mut(&mut self, id: u32) -> Option<&mut T> {
        self.entries.get_mut(id as usize)?.as_mut()
    }

    /// Drops the entry `id` where it lies (cheaper than moving it out when its value is not needed).
    fn discard(&mut self, id: u32) {
        if let Some(entry) = self.entries.get_mut(id as usize).filter(|e| e.is_some()) {
            *entry = None;
            self.free.push(id);
        }
    }

    fn remove(&mut self, id: u32) -> Option<T> {
        let value = self.entries.get_mut(id as usize)?.take()?;
        self.free.push(id);
        Some(value)
    }

    fn len(&self) -> usize {
        self.entries.len() - self.free.len()
    }
}

/// The requests in a cluster, their fan-outs and their timed resends.
#[derive(Debug, Default)]
pub(crate) struct RoutedRequests {
    requests: Slab<Routed>,
    fanouts: Slab<Fanout>,
    /// (when, what) in no order: few at once, and only while the cluster moves slots or fails over.
    resends: Vec<(Instant, Resend)>,
}

impl RoutedRequests {
    /// Keeps `routed`; returns its ticket.
    pub(crate) fn add(&mut self, routed: Routed) -> u32 {
        self.requests.insert(routed)
    }

    /// The request of `ticket`, to be sent again (it stays kept).
    pub(crate) fn get_mut(&mut self, ticket: u32) -> Option<&mut Routed> {
        self.requests.get_mut(ticket)
    }

    /// The request of `ticket`, answered: it is forgotten.
    pub(crate) fn take(&mut self, ticket: u32) -> Option<Routed> {
        self.requests.remove(ticket)
    }

    /// Where the reply to the request of `ticket` goes; the request, answered, is forgotten.
    pub(crate) fn answered(&mut self, ticket: u32) -> Option<ReplyTo> {
        let routed = self.requests.get(ticket)?;
        let to = ReplyTo { client: routed.client, seq: routed.seq, part: routed.part, scan: routed.scan };
        self.requests.discard(ticket);
        Some(to)
    }

    /// Keeps a fan-out; returns its id.
    pub(crate) fn add_fanout(&mut self, fanout: Fanout) -> u32 {
        self.fanouts.insert(fanout)
    }

    /// Part `index` of fan-out `id` answered `reply`: the client, its slot and the merged reply once every part
    /// has answered (the fan-out is then forgotten; one that answers a part of another fills that part).
    pub(crate) fn part_answered(&mut self, id: u32, index: usize, reply: Bytes) -> Option<(ConnId, u64, Bytes)> {
        let (mut id, mut index, mut reply) = (id, index, reply);
        loop {
            let fanout = self.fanouts.get_mut(id)?;
            let merged = fanout.answered(index, reply)?;
            match self.fanouts.remove(id)?.answer {
                Answer::Client { conn, seq } => return Some((conn, seq, merged)),
                Answer::Part { fanout, index: part } => (id, index, reply) = (fanout, part, merged),
            }
        }
    }

    /// Sends `resend` again at `at`.
    pub(crate) fn resend_at(&mut self, at: Instant, resend: Resend) {
        self.resends.push((at, resend));
    }

    /// The resends due by `now`, taken off the list, each client's in the order it sent the requests. One whose
    /// client has an earlier request waiting for a resend not due yet waits until that one's time: a client's
    /// requests are sent again in the order it sent them.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<Resend> {
        if self.resends.is_empty() {
            return Vec::new();
        }
        let requests = &self.requests;
        let client_seq = |resend: &Resend| requests.get(resend.ticket).map(|r| (r.client, r.seq));
        let waiting: Vec<(Instant, (ConnId, u64))> =
            self.resends.iter().filter(|(at, _)| *at > now).filter_map(|(at, r)| Some((*at, client_seq(r)?))).collect();
        let mut due = Vec::new();
        let mut later = Vec::new();
        for (at, resend) in self.resends.drain(..) {
            let Some((client, seq)) = client_seq(&resend) else { continue };
            let behind = waiting.iter().filter(|(_, (c, s))| *c == client && *s < seq).map(|(at, _)| *at).max();
            match behind {
                Some(earlier) => later.push((at.max(earlier), resend)),
                None if at <= now => due.push((seq, resend)),
                None => later.push((at, resend)),
            }
        }
        self.resends = later;
        due.sort_by_key(|(seq, _)| *seq);
        due.into_iter().map(|(_, resend)| resend).collect()
    }

    /// Whether a request of `client` waits to be sent again: its later requests wait behind it.
    pub(crate) fn resend_waiting_for(&self, client: ConnId) -> bool {
        !self.resends.is_empty()
            && self.resends.iter().any(|(_, r)| self.requests.get(r.ticket).is_some_and(|q| q.client == client))
    }

    /// When the next resend is due.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.resends.iter().map(|(at, _)| *at).min()
    }

    /// Requests kept now (for the status page and tests).
    pub(crate) fn len(&self) -> usize {
        self.requests.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key_slots::Merge;
    use std::time::Duration;

    fn routed(seq: u64, part: Option<(u32, usize)>) -> Routed {
        let client = crate::conn::client_and_backend_ids().0;
        let ping = Bytes::from_static(b"*1\r\n$4\r\nPING\r\n");
        Routed { part, read_only: true, ..Routed::new(client, seq, ping, Aim::AnyPrimary, false, 0, Instant::now()) }
    }

    #[test]
    fn tickets_are_reused_and_stale_ones_find_nothing() {
        let mut requests = RoutedRequests::default();
        let a = requests.add(routed(1, None));
        let b = requests.add(routed(2, None));
        assert_ne!(a, b);
        assert_eq!(requests.take(a).map(|r| r.seq), Some(1));
        assert!(requests.take(a).is_none());
        assert_eq!(requests.add(routed(3, None)), a);
        assert_eq!(requests.len(), 2);
    }

    #[test]
    fn an_answered_request_says_where_its_reply_goes_and_frees_its_ticket() {
        let mut requests = RoutedRequests::default();
        let a = requests.add(routed(7, Some((4, 1))));
        let to = requests.answered(a).expect("kept");
        assert_eq!((to.seq, to.part, to.scan), (7, Some((4, 1)), None));
        assert!(requests.answered(a).is_none(), "a stale ticket finds nothing");
        assert_eq!(requests.len(), 0);
        assert_eq!(requests.add(routed(8, None)), a, "its ticket is used again, once");
        assert_ne!(requests.add(routed(9, None)), a);
    }

    #[test]
    fn a_fanout_answers_once_every_part_has() {
        let mut requests = RoutedRequests::default();
        let conn = crate::conn::client_and_backend_ids().0;
        let id = requests.add_fanout(Fanout::new(Answer::Client { conn, seq: 9 }, Merge::Sum, vec![vec![0], vec![1]]));
        // Part 1 is split again, in two.
        let inner =
            requests.add_fanout(Fanout::new(Answer::Part { fanout: id, index: 1 }, Merge::Sum, vec![vec![0], vec![1]]));
        assert!(requests.part_answered(inner, 0, Bytes::from_static(b":0\r\n")).is_none());
        assert!(requests.part_answered(id, 0, Bytes::from_static(b":1\r\n")).is_none());
        let (_, seq, reply) = requests.part_answered(inner, 1, Bytes::from_static(b":1\r\n")).expect("complete");
        assert_eq!((seq, &reply[..]), (9, &b":2\r\n"[..]));
        assert!(requests.part_answered(id, 1, Bytes::from_static(b":1\r\n")).is_none());
    }

    #[test]
    fn resends_come_due_in_time_order() {
        let mut requests = RoutedRequests::default();
        let now = Instant::now();
        let (first, second) = (requests.add(routed(1, None)), requests.add(routed(2, None)));
        requests.resend_at(now + Duration::from_millis(20), Resend { ticket: second, ask: None });
        requests.resend_at(now + Duration::from_millis(10), Resend { ticket: first, ask: None });
        assert_eq!(requests.deadline(), Some(now + Duration::from_millis(10)));
        assert!(requests.due(now).is_empty());
        assert!(requests.resend_waiting_for(routed(0, None).client));
        let due: Vec<u32> = requests.due(now + Duration::from_millis(15)).iter().map(|r| r.ticket).collect();
        assert_eq!(due, vec![first]);
        assert_eq!(requests.due(now + Duration::from_millis(30)).len(), 1);
        assert_eq!(requests.deadline(), None);
        assert!(!requests.resend_waiting_for(routed(0, None).client));
    }

    #[test]
    fn a_clients_resends_keep_its_order() {
        let mut requests = RoutedRequests::default();
        let now = Instant::now();
        let (first, second) = (requests.add(routed(1, None)), requests.add(routed(2, None)));
        // The later request bounced sooner, with a shorter backoff: it waits for the earlier one.
        requests.resend_at(now + Duration::from_millis(5), Resend { ticket: second, ask: None });
        requests.resend_at(now + Duration::from_millis(20), Resend { ticket: first, ask: None });
        assert!(requests.due(now + Duration::from_millis(10)).is_empty());
        assert_eq!(requests.deadline(), Some(now + Duration::from_millis(20)), "no deadline in the past");
        let due: Vec<u32> = requests.due(now + Duration::from_millis(20)).iter().map(|r| r.ticket).collect();
        assert_eq!(due, vec![first, second]);
    }
}
