//! Requests held until they can go out (while no master is known, or behind an earlier held request of the same
//! client): each client's in arrival order, bounded in time (`hold_ms`: past it a request is answered with an
//! error, `MASTERDOWN` while no master is known) and in memory over all clients (`hold_max_bytes`: past it a new
//! request is refused at once, in its turn). The `client` machine keeps each client's queue with the client and
//! answers for it; the bounds and the deadlines over all clients are kept here.

use crate::command::CommandSpec;
use crate::conn::ConnId;
use crate::contract::Outbox;
use crate::event::Event;
use crate::resp::Request;
use crate::session::Handling;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A request waiting in a client's queue, already classified.
pub(crate) struct HeldRequest {
    pub(crate) request: Request,
    /// The command, if Redis knows it.
    pub(crate) spec: Option<&'static CommandSpec>,
    pub(crate) handling: Handling,
    pub(crate) since: Instant,
    /// The client spoke RESP3 when it sent it (its protocol may change before a held request runs).
    pub(crate) resp3: bool,
}

impl HeldRequest {
    /// The memory it takes while held: its bytes and its bookkeeping.
    fn cost(&self) -> usize {
        self.request.frame().len() + std::mem::size_of::<HeldRequest>()
    }
}

/// One client's held requests, oldest first. Changed only through the [`HoldQueue`], which counts them.
#[derive(Default)]
pub(crate) struct ClientHolds {
    requests: VecDeque<HeldRequest>,
    /// Whether the queue's deadlines have an entry for this client.
    tracked: bool,
}

impl ClientHolds {
    /// Whether nothing is held (then a new request need not wait behind one).
    #[inline(always)]
    pub(crate) fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// How many requests are held.
    #[inline(always)]
    pub(crate) fn len(&self) -> usize {
        self.requests.len()
    }
}

/// What becomes of a request that cannot go out now ([`HoldQueue::admit`]).
pub(crate) enum Admission {
    /// Hold it (past the memory bound: a marker that answers with the error in its turn, behind the client's
    /// earlier held requests).
    Hold(HeldRequest),
    /// Past the memory bound with nothing held before it: answer it with this error now.
    Refuse(String),
}

/// The held requests of all clients: their bounds, their count and memory, and the deadlines in order.
pub(crate) struct HoldQueue {
    /// How long a request may be held (`hold_ms`).
    hold: Duration,
    /// Most memory held requests may take (`hold_max_bytes`).
    max_bytes: usize,
    /// Requests held over all clients.
    count: usize,
    /// Memory they take (see [`HeldRequest::cost`]).
    bytes: usize,
    /// (deadline, client) in deadline order, at most one per client; stale entries (for a client that is gone, or
    /// whose requests ran) are skipped when they come due.
    deadlines: VecDeque<(Instant, ConnId)>,
    /// What the error ends with: ` (address: reason; ...)`, why each server cannot be used, or nothing (see
    /// [`HoldQueue::set_obstacles`]).
    obstacles: String,
    /// Requests wait for a cluster's primary, not for a master (cluster mode): the error says `CLUSTERDOWN`.
    pub(crate) cluster: bool,
}

impl HoldQueue {
    /// Nothing held yet; requests are held for `hold`, in at most `max_bytes` over all clients.
    pub(crate) fn new(hold: Duration, max_bytes: usize) -> HoldQueue {
        HoldQueue {
            hold,
            max_bytes,
            count: 0,
            bytes: 0,
            deadlines: VecDeque::new(),
            obstacles: String::new(),
            cluster: false,
        }
    }

    /// Applies reloaded bounds. Deadlines already tracked stay; when one comes, the requests behind it are checked
    /// against the new `hold`.
    pub(crate) fn set_limits(&mut self, hold: Duration, max_bytes: usize) {
        self.hold = hold;
        self.max_bytes = max_bytes;
    }

    /// How many requests are held over all clients, and the memory they take (for the status snapshot).
    pub(crate) fn stats(&self) -> (usize, usize) {
        (self.count, self.bytes)
    }

    /// Whether any client has requests held.
    pub(crate) fn any(&self) -> bool {
        self.bytes > 0
    }

    /// The clients with held requests, oldest deadline first (with some whose requests have since run).
    pub(crate) fn holding(&self) -> Vec<ConnId> {
        self.deadlines.iter().map(|(_, c)| *c).collect()
    }

    /// The earliest instant a held request expires.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadlines.front().map(|(at, _)| *at)
    }

    /// Sets what the error of a held request that expires ends with: ` (address: reason; ...)`, why each server
    /// cannot be used, or nothing; kept current by the coordinator while requests are held.
    pub(crate) fn set_obstacles(&mut self, obstacles: String) {
        self.obstacles = obstacles;
    }

    /// The error a request gets when it is not sent within the bounds.
    pub(crate) fn error(&self, master_known: bool) -> String {
        let ms = self.hold.as_millis();
        let why = &self.obstacles;
        if self.cluster {
            format!("CLUSTERDOWN redis-proxy held the request for {ms} ms: no reachable primary serves its slot{why}")
        } else if master_known {
            format!("ERR redis-proxy held the request for {ms} ms and could not send it{why}")
        } else {
            format!("MASTERDOWN no master is available: redis-proxy held the request for {ms} ms{why}")
        }
    }

    /// Decides whether `held`, a request that cannot go out now, may be held within the memory bound. Past it the
    /// request is refused (and reported as expired): at once when `nothing_held` before it for its client, else
    /// by a marker of a few bytes in its place, so that the error keeps its turn (the client's reading is paused
    /// by `max_pipeline`, which bounds the markers).
    pub(crate) fn admit(
        &self,
        held: HeldRequest,
        nothing_held: bool,
        master_known: bool,
        out: &mut Outbox,
    ) -> Admission {
        if self.bytes + held.cost() <= self.max_bytes {
            return Admission::Hold(held);
        }
        out.event(Event::RequestsExpired { count: 1, cluster: self.cluster });
        let message = self.error(master_known);
        if nothing_held {
            return Admission::Refuse(message);
        }
        Admission::Hold(HeldRequest {
            request: Request::from_args::<&[u8]>(&[]),
            spec: None,
            handling: Handling::Refuse(message),
            ..held
        })
    }

    /// Queues `held` behind the other held requests of `conn` (`mine`); it expires `hold` after it arrived.
    pub(crate) fn push(&mut self, conn: ConnId, mine: &mut ClientHolds, held: HeldRequest) {
        let deadline = held.since + self.hold;
        self.count += 1;
        self.bytes += held.cost();
        mine.requests.push_back(held);
        if !mine.tracked {
            mine.tracked = true;
            self.track(deadline, conn);
        }
    }

    /// The oldest of `mine`, taken off the queue.
    pub(crate) fn pop(&mut self, mine: &mut ClientHolds) -> Option<HeldRequest> {
        let held = mine.requests.pop_front()?;
        self.count -= 1;
        self.bytes -= held.cost();
        Some(held)
    }

    /// Puts back at the front of `mine` a request [`HoldQueue::pop`] gave out that still cannot run.
    pub(crate) fn unpop(&mut self, mine: &mut ClientHolds, held: HeldRequest) {
        self.count += 1;
        self.bytes += held.cost();
        mine.requests.push_front(held);
    }

    /// Drops every request of `mine` (never to be sent) and returns how many there were.
    pub(crate) fn drop_all(&mut self, mine: &mut ClientHolds) -> usize {
        let dropped = self.forget(mine);
        mine.requests = VecDeque::new();
        dropped
    }

    /// The client holding `mine` is gone: its requests no longer count. Returns how many there were.
    pub(crate) fn forget(&mut self, mine: &ClientHolds) -> usize {
        self.count -= mine.requests.len();
        self.bytes -= mine.requests.iter().map(HeldRequest::cost).sum::<usize>();
        mine.requests.len()
    }

    /// The next client whose deadline has come by `now`, its entry taken off the deadlines. Then call
    /// [`HoldQueue::expire_front`] with its queue until it returns false.
    pub(crate) fn next_due(&mut self, now: Instant) -> Option<ConnId> {
        let &(deadline, conn) = self.deadlines.front()?;
        if deadline > now {
            return None;
        }
        self.deadlines.pop_front();
        Some(conn)
    }

    /// Takes the oldest request of `conn` (`mine`, whose deadline came) off its queue if its time is up by `now`:
    /// true, and it is to be answered with [`HoldQueue::error`]. False when none is left, or when the oldest one
    /// left is not due yet: its own deadline is then tracked (the entry that came due was an older request's).
    pub(crate) fn expire_front(&mut self, conn: ConnId, mine: &mut ClientHolds, now: Instant) -> bool {
        mine.tracked = false;
        let Some(front) = mine.requests.front() else { return false };
        let deadline = front.since + self.hold;
        if deadline > now {
            mine.tracked = true;
            self.track(deadline, conn);
            return false;
        }
        self.pop(mine);
        true
    }

    fn track(&mut self, deadline: Instant, conn: ConnId) {
        let at = self.deadlines.partition_point(|(d, _)| *d <= deadline);
        self.deadlines.insert(at, (deadline, conn));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::{ConnTable, Lane};
    use crate::session::Pin;

    const HOLD: Duration = Duration::from_millis(100);

    fn request(since: Instant, key: &str) -> HeldRequest {
        HeldRequest {
            request: Request::from_args(&["GET", key]),
            spec: None,
            handling: Handling::Forward(Pin::Shared),
            since,
            resp3: false,
        }
    }

    fn key(held: &HeldRequest) -> &[u8] {
        held.request.arg(1).unwrap_or_default()
    }

    fn clients(n: usize) -> Vec<ConnId> {
        let mut table = ConnTable::new(Lane::Client);
        (0..n).map(|_| table.insert(())).collect()
    }

    /// Admits and holds `held` for `conn`, which must fit.
    fn hold(queue: &mut HoldQueue, conn: ConnId, mine: &mut ClientHolds, held: HeldRequest) {
        let mut out = Outbox::default();
        let Admission::Hold(held) = queue.admit(held, mine.is_empty(), false, &mut out) else {
            panic!("refused within the bound")
        };
        assert!(out.events.is_empty());
        queue.push(conn, mine, held);
    }

    #[test]
    fn requests_are_held_and_released_in_arrival_order() {
        let t0 = Instant::now();
        let conn = clients(1)[0];
        let mut queue = HoldQueue::new(HOLD, 1 << 20);
        let mut mine = ClientHolds::default();
        assert!(!queue.any());
        for k in ["a", "b", "c"] {
            hold(&mut queue, conn, &mut mine, request(t0, k));
        }
        assert_eq!(mine.len(), 3);
        assert_eq!(queue.stats().0, 3);
        assert!(queue.any());
        assert_eq!(queue.holding(), [conn]);
        assert_eq!(queue.deadline(), Some(t0 + HOLD), "one deadline per client: its oldest request's");
        let a = queue.pop(&mut mine).expect("held");
        assert_eq!(key(&a), b"a");
        // It still cannot run: back to the front, ahead of b.
        queue.unpop(&mut mine, a);
        let released: Vec<Vec<u8>> = std::iter::from_fn(|| queue.pop(&mut mine)).map(|h| key(&h).to_vec()).collect();
        assert_eq!(released, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert!(mine.is_empty());
        assert_eq!(queue.stats(), (0, 0));
        assert!(!queue.any());
    }

    #[test]
    fn requests_expire_at_their_deadline_with_the_error() {
        let t0 = Instant::now();
        let conn = clients(1)[0];
        let mut queue = HoldQueue::new(HOLD, 1 << 20);
        let mut mine = ClientHolds::default();
        hold(&mut queue, conn, &mut mine, request(t0, "a"));
        hold(&mut queue, conn, &mut mine, request(t0 + Duration::from_millis(10), "b"));
        assert_eq!(queue.next_due(t0 + HOLD - Duration::from_millis(1)), None, "not yet");
        assert_eq!(queue.next_due(t0 + HOLD), Some(conn), "due at the deadline itself");
        assert!(queue.expire_front(conn, &mut mine, t0 + HOLD), "a expires");
        assert!(!queue.expire_front(conn, &mut mine, t0 + HOLD), "b has 10 ms left");
        assert_eq!(mine.len(), 1);
        assert_eq!(queue.deadline(), Some(t0 + HOLD + Duration::from_millis(10)), "b's own deadline is tracked");
        assert_eq!(queue.next_due(t0 + HOLD), None);
        let later = t0 + HOLD + Duration::from_millis(10);
        assert_eq!(queue.next_due(later), Some(conn));
        assert!(queue.expire_front(conn, &mut mine, later));
        assert!(!queue.expire_front(conn, &mut mine, later));
        assert_eq!((queue.stats(), queue.deadline()), ((0, 0), None));
        assert_eq!(queue.error(false), "MASTERDOWN no master is available: redis-proxy held the request for 100 ms");
        assert_eq!(queue.error(true), "ERR redis-proxy held the request for 100 ms and could not send it");
    }

    #[test]
    fn deadlines_come_due_oldest_first_over_clients() {
        let t0 = Instant::now();
        let ids = clients(3);
        let mut queue = HoldQueue::new(HOLD, 1 << 20);
        let mut mine: Vec<ClientHolds> = (0..3).map(|_| ClientHolds::default()).collect();
        for (i, ms) in [(0, 30), (1, 10), (2, 20)] {
            hold(&mut queue, ids[i], &mut mine[i], request(t0 + Duration::from_millis(ms), "k"));
        }
        assert_eq!(queue.holding(), [ids[1], ids[2], ids[0]]);
        assert_eq!(queue.deadline(), Some(t0 + HOLD + Duration::from_millis(10)));
        let due: Vec<ConnId> = std::iter::from_fn(|| queue.next_due(t0 + HOLD + Duration::from_millis(25))).collect();
        assert_eq!(due, [ids[1], ids[2]]);
    }

    #[test]
    fn a_stale_deadline_expires_nothing() {
        let t0 = Instant::now();
        let conn = clients(1)[0];
        let mut queue = HoldQueue::new(HOLD, 1 << 20);
        let mut mine = ClientHolds::default();
        hold(&mut queue, conn, &mut mine, request(t0, "a"));
        assert!(queue.pop(&mut mine).is_some(), "it ran");
        assert_eq!(queue.next_due(t0 + HOLD), Some(conn));
        assert!(!queue.expire_front(conn, &mut mine, t0 + HOLD));
        assert_eq!(queue.deadline(), None);
        // Held again later: tracked afresh.
        hold(&mut queue, conn, &mut mine, request(t0 + HOLD, "b"));
        assert_eq!(queue.deadline(), Some(t0 + HOLD + HOLD));
    }

    #[test]
    fn past_the_memory_bound_a_request_is_refused_in_its_turn() {
        let t0 = Instant::now();
        let conn = clients(1)[0];
        let one = request(t0, "a").cost();
        let mut queue = HoldQueue::new(HOLD, one);
        let mut mine = ClientHolds::default();
        let mut out = Outbox::default();
        // Nothing held before it: refused at once.
        let Admission::Refuse(message) = queue.admit(request(t0, "aa"), true, false, &mut out) else {
            panic!("over the bound")
        };
        assert_eq!(message, queue.error(false));
        assert_eq!(out.counters.errors.hold_expired, 1);
        hold(&mut queue, conn, &mut mine, request(t0, "a"));
        assert_eq!(queue.stats(), (1, one), "exactly at the bound");
        // Behind a held request: a marker that refuses it in its turn.
        let Admission::Hold(marker) = queue.admit(request(t0, "b"), mine.is_empty(), true, &mut out) else {
            panic!("a marker keeps its turn")
        };
        assert_eq!(marker.handling, Handling::Refuse(queue.error(true)));
        assert!(marker.request.is_empty() && marker.spec.is_none());
        assert!(marker.cost() < request(t0, "b").cost(), "the request's bytes are dropped");
        assert_eq!(out.counters.errors.hold_expired, 2);
        queue.push(conn, &mut mine, marker);
        assert_eq!(mine.len(), 2);
        assert_eq!(key(&queue.pop(&mut mine).expect("held")), b"a");
        assert_eq!(queue.pop(&mut mine).map(|h| h.handling), Some(Handling::Refuse(queue.error(true))));
    }

    #[test]
    fn dropping_and_forgetting_a_client_release_its_memory() {
        let t0 = Instant::now();
        let ids = clients(2);
        let mut queue = HoldQueue::new(HOLD, 1 << 20);
        let (mut first, mut second) = (ClientHolds::default(), ClientHolds::default());
        hold(&mut queue, ids[0], &mut first, request(t0, "a"));
        hold(&mut queue, ids[0], &mut first, request(t0, "b"));
        hold(&mut queue, ids[1], &mut second, request(t0, "c"));
        // Shutdown or a protocol error: the client's requests are dropped, each to be answered with an error.
        assert_eq!(queue.drop_all(&mut first), 2);
        assert!(first.is_empty());
        assert_eq!(queue.stats(), (1, request(t0, "c").cost()));
        // The other client left.
        assert_eq!(queue.forget(&second), 1);
        assert_eq!(queue.stats(), (0, 0));
        assert!(!queue.any());
    }
}
