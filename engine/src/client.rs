//! Client connections: the table of clients and each one's state, its backpressure, pass-through, and the end of
//! its life. Its replies in request order are a [`ReplyOrder`], its held requests a queue in the [`HoldQueue`],
//! and what it sends is split off and classified in [`intake`]; `Clients` answers for all three. Nothing here
//! chooses a server or a backend connection.

use crate::auth::{ClientAuth, Users};
use crate::config::Config;
use crate::conn::{ConnId, ConnTable, Lane};
use crate::contract::{Action, Outbox};
use crate::cursor::{Cursors, Issuer, Process, ScanCall};
use crate::event::Event;
use crate::fence::{ReadFence, ReadFloor};
use crate::hold_queue::{Admission, ClientHolds, HoldQueue};
use crate::pool::Waiter;
use crate::reply_order::{ReadBatches, ReplyOrder};
use crate::resp::{self, RequestScanner};
use crate::session::{Pin, Session};
use bytes::Bytes;
use std::net::SocketAddr;
use std::time::Instant;

pub(crate) use crate::hold_queue::HeldRequest;
pub(crate) use intake::NextRequest;

mod intake;

/// A reply this large (long enough to be streamed), or as many bytes arriving at once from a client, make the
/// client one that moves large values ([`Clients::moves_large_values`]).
pub(crate) const LARGE_VALUE: usize = crate::stream::STREAM_MIN;

/// Where a client's next forwarded request may go.
pub(crate) struct ForwardState {
    /// Its private backend connection, if it holds one.
    pub(crate) private: Option<ConnId>,
    /// Its shared pool slot.
    pub(crate) shared_slot: usize,
    /// Replies it still awaits.
    pub(crate) in_flight: usize,
}

/// A client that is gone, with the private connection it leaves behind.
pub(crate) struct Departed {
    /// The client.
    pub(crate) client: ConnId,
    /// Its private connection, if it held one.
    pub(crate) private: Option<ConnId>,
    /// The server may still push frames at the private connection: it cannot be cleaned for reuse.
    pub(crate) passthrough: bool,
}

struct Client {
    scanner: RequestScanner,
    session: Session,
    /// What its authentication allows it.
    auth: ClientAuth,
    /// Its replies, in request order.
    replies: ReplyOrder,
    /// Cluster mode: where its reads begin among its replies, so that one read's replies go out together.
    batches: Option<Box<ReadBatches>>,
    /// Its requests waiting to go out, in the [`HoldQueue`].
    held: ClientHolds,
    /// The private backend connection, if the session needs one.
    private: Option<ConnId>,
    /// The backend connection of the newest request in flight, so the client's order survives a switch.
    last_backend: Option<ConnId>,
    shared_slot: usize,
    paused: bool,
    write_blocked: bool,
    /// The backend connection its upload goes on is blocked on writing.
    upload_blocked: bool,
    bytes_while_blocked: usize,
    /// Its private connection passes every frame straight through (set once the first passthrough request
    /// went out, after all earlier replies came back).
    passthrough: bool,
    /// QUIT, a protocol error or shutdown: close once the queued replies are out, read nothing more.
    closing: bool,
    /// The master epoch of its oldest write not yet covered by a `WAIT` (None: none since the last `WAIT`).
    unconfirmed_writes_since: Option<u64>,
    /// What splitting reads to replicas must know of it, once it matters (boxed and absent in `allToMaster`, so
    /// a reply costs one check).
    reads: Option<Box<ReadTracking>>,
}

/// A client's facts that bend where its reads go in `readsToSlaves`.
#[derive(Default)]
struct ReadTracking {
    /// The `SCAN`-family cursors returned to it.
    cursors: Cursors,
    /// How far its writes are known to have replicated (`read_your_writes`).
    fence: ReadFence,
}

impl Client {
    fn in_flight(&self) -> usize {
        self.replies.len()
    }

    fn is_passthrough(&self) -> bool {
        self.passthrough && self.private.is_some()
    }
}

/// Every client connection.
pub(crate) struct Clients {
    conns: ConnTable<Client>,
    count: usize,
    /// The requests held over all clients: their bounds and deadlines.
    holds: HoldQueue,
    /// Clients removed since the coordinator last asked, whose private connections it must hand back.
    departed: Vec<Departed>,
    /// Set when a reply answered a client's newest write (read fences need fresh offsets); taken by the
    /// coordinator.
    write_answered: bool,
    /// The serial the monitor's next offset request carries (a fence's proof must come from it or a later one);
    /// kept current by the coordinator.
    next_offset_serial: u64,
    config: ClientLimits,
}

/// The settings the client machine applies.
struct ClientLimits {
    limits: resp::Limits,
    pool_size: usize,
    large_pool_size: usize,
    max_clients: usize,
    max_pipeline: usize,
    client_output_limit: usize,
    allow_topology_commands: bool,
    users: Users,
    /// Cluster mode: sessions refuse what would pin a connection to one node.
    cluster: bool,
}

impl ClientLimits {
    fn from(config: &Config) -> ClientLimits {
        ClientLimits {
            limits: config.limits,
            pool_size: config.pool_size,
            large_pool_size: config.large_pool_size,
            max_clients: config.max_clients,
            max_pipeline: config.max_pipeline,
            client_output_limit: config.client_output_limit,
            allow_topology_commands: config.allow_topology_commands,
            users: Users::new(&config.client_users),
            cluster: config.cluster.is_some(),
        }
    }
}

impl Clients {
    /// No clients yet, with the limits of `config`.
    pub(crate) fn new(config: &Config) -> Clients {
        Clients {
            conns: ConnTable::new(Lane::Client),
            count: 0,
            holds: {
                let mut holds = HoldQueue::new(config.hold, config.hold_max_bytes);
                holds.cluster = config.cluster.is_some();
                holds
            },
            departed: Vec::new(),
            write_answered: false,
            next_offset_serial: 0,
            config: ClientLimits::from(config),
        }
    }

    /// Applies the limits of a reloaded `config` (`pool_size` and the protocol limits cannot change live: the
    /// caller refuses a config that changes them).
    pub(crate) fn set_limits(&mut self, config: &Config) {
        self.config = ClientLimits::from(config);
        self.holds.set_limits(config.hold, config.hold_max_bytes);
    }

    /// Clients connected.
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// Registers a new client from `peer`; turned away at once when shutting down or over `max_clients`.
    pub(crate) fn accept(&mut self, peer: SocketAddr, shutting_down: bool, out: &mut Outbox) -> ConnId {
        let conn = self.conns.insert(Client {
            scanner: RequestScanner::new(self.config.limits),
            session: Session::new(self.config.cluster),
            auth: ClientAuth::new(&self.config.users),
            replies: ReplyOrder::default(),
            batches: self.config.cluster.then(Box::default),
            held: ClientHolds::default(),
            private: None,
            last_backend: None,
            shared_slot: 0,
            paused: false,
            write_blocked: false,
            upload_blocked: false,
            bytes_while_blocked: 0,
            passthrough: false,
            closing: false,
            reads: None,
            unconfirmed_writes_since: None,
        });
        let pool_size = self.config.pool_size;
        if let Some(client) = self.conns.get_mut(conn) {
            client.shared_slot = spread(conn) % pool_size;
        }
        self.count += 1;
        if shutting_down {
            out.send(conn, resp::error_reply("ERR redis-proxy is shutting down"));
            self.remove(conn, true, out);
        } else if self.count > self.config.max_clients {
            out.event(Event::ClientRejected { peer });
            out.send(conn, resp::error_reply("ERR max number of clients reached"));
            self.remove(conn, true, out);
        } else {
            out.event(Event::ClientAccepted { conn, peer });
        }
        conn
    }

    /// The backend connection `conn`'s upload goes on is blocked on writing (`true`) or drained (`false`).
    pub(crate) fn set_upload_blocked(&mut self, conn: ConnId, blocked: bool, out: &mut Outbox) {
        let Some(client) = self.conns.get_mut(conn) else { return };
        client.upload_blocked = blocked;
        self.update_reading(conn, out);
    }

    /// Marks `conn` closing (QUIT, protocol error): it is closed once every awaited reply is out.
    pub(crate) fn close_after_replies(&mut self, conn: ConnId, out: &mut Outbox) {
        if let Some(client) = self.conns.get_mut(conn) {
            client.closing = true;
        }
        self.close_if_done(conn, out);
    }

    /// Drops every held request of `conn` and returns how many there were.
    fn take_held(&mut self, conn: ConnId) -> usize {
        let Some(client) = self.conns.get_mut(conn) else { return 0 };
        self.holds.drop_all(&mut client.held)
    }

    /// Whether `conn` has requests waiting (then a new one must wait behind them).
    pub(crate) fn has_held(&self, conn: ConnId) -> bool {
        self.conns.get(conn).is_some_and(|c| !c.held.is_empty())
    }

    /// How many requests are held over all clients, and the memory they take (for the status snapshot).
    pub(crate) fn held_stats(&self) -> (usize, usize) {
        self.holds.stats()
    }

    /// Whether any client has requests waiting.
    pub(crate) fn any_held(&self) -> bool {
        self.holds.any()
    }

    /// The clients with held requests, oldest deadline first.
    pub(crate) fn holding(&self) -> Vec<ConnId> {
        self.holds.holding()
    }

    /// The earliest instant a held request expires.
    pub(crate) fn hold_deadline(&self) -> Option<Instant> {
        self.holds.deadline()
    }

    /// Queues a request that cannot go out yet; past the global bound it gets an error instead, in its turn: behind
    /// the client's earlier held requests, in place of the request (whose bytes are dropped).
    /// Out of line: rare (no master, or behind a held request), and inlined it would weigh on the request path
    /// of `Engine::handle_input` (bench/instructions.sh).
    #[cold]
    #[inline(never)]
    pub(crate) fn hold(&mut self, conn: ConnId, held: HeldRequest, master_known: bool, out: &mut Outbox) {
        let held = match self.holds.admit(held, !self.has_held(conn), master_known, out) {
            Admission::Hold(held) => held,
            Admission::Refuse(message) => {
                self.reply_local(conn, resp::error_reply(&message), out);
                return;
            }
        };
        let Some(client) = self.conns.get_mut(conn) else { return };
        self.holds.push(conn, &mut client.held, held);
    }

    /// The oldest held request of `conn`, taken off its queue (None when there is none, or when the client is
    /// closing: after QUIT nothing more is sent, as Redis reads nothing after it).
    pub(crate) fn pop_held(&mut self, conn: ConnId) -> Option<HeldRequest> {
        let client = self.conns.get_mut(conn)?;
        if client.closing {
            self.holds.drop_all(&mut client.held);
            return None;
        }
        self.holds.pop(&mut client.held)
    }

    /// Puts back a request [`Clients::pop_held`] gave out that still cannot run.
    pub(crate) fn unpop_held(&mut self, conn: ConnId, held: HeldRequest) {
        let Some(client) = self.conns.get_mut(conn) else { return };
        self.holds.unpop(&mut client.held, held);
    }

    /// Sets what the error of a held request that expires ends with (see [`HoldQueue::set_obstacles`]).
    pub(crate) fn set_obstacles(&mut self, obstacles: String) {
        self.holds.set_obstacles(obstacles);
    }

    /// Answers every held request whose time is up with an error.
    pub(crate) fn expire_held(&mut self, now: Instant, master_known: bool, out: &mut Outbox) {
        let mut expired = 0;
        while let Some(conn) = self.holds.next_due(now) {
            let error = resp::error_reply(&self.holds.error(master_known));
            // Looked up again after each error: writing one may remove the client (its output limit).
            while let Some(client) = self.conns.get_mut(conn) {
                if !self.holds.expire_front(conn, &mut client.held, now) {
                    break;
                }
                expired += 1;
                self.reply_local(conn, error.clone(), out);
            }
            self.update_reading(conn, out);
        }
        if expired > 0 {
            out.event(Event::RequestsExpired { count: expired, cluster: self.holds.cluster });
        }
    }

    /// `conn` moves large values (a reply of [`LARGE_VALUE`] or more, or as much at once from it): from now on its
    /// shared connections are among the `large_pool_size` ones set aside for such clients, so that small requests
    /// keep sharing few connections and large ones do not queue on them. The order barrier of
    /// [`Clients::start_request`] keeps its requests in order across the move.
    #[cold]
    #[inline(never)]
    pub(crate) fn moves_large_values(&mut self, conn: ConnId) {
        let (pool_size, large_pool_size) = (self.config.pool_size, self.config.large_pool_size);
        if let Some(client) = self.conns.get_mut(conn).filter(|_| large_pool_size > 0) {
            client.shared_slot = pool_size + spread(conn) % large_pool_size;
        }
    }

    /// Where the next forwarded request of `conn` may go (None: the client is gone).
    pub(crate) fn forward_state(&self, conn: ConnId) -> Option<ForwardState> {
        let client = self.conns.get(conn)?;
        Some(ForwardState { private: client.private, shared_slot: client.shared_slot, in_flight: client.in_flight() })
    }

    /// Gives `conn` the private connection `backend`.
    pub(crate) fn set_private(&mut self, conn: ConnId, backend: ConnId) {
        if let Some(client) = self.conns.get_mut(conn) {
            client.private = Some(backend);
        }
    }

    /// Takes a reply slot for a request of `conn` about to go out on `backend`, and returns who its reply is for
    /// (`Ok(None)` in pass-through, where replies are not counted). `Err(())` is the order barrier: a switch of
    /// connection, or into pass-through, waits until every earlier reply is in. `write_epoch` is the master epoch
    /// when the request is a write to the master.
    #[allow(clippy::result_unit_err)]
    // Inlined by hand: since cluster mode, the compiler no longer does it (15 instructions per round trip).
    #[inline(always)]
    pub(crate) fn start_request(
        &mut self,
        now: Instant,
        conn: ConnId,
        backend: ConnId,
        pin: Pin,
        write_epoch: Option<u64>,
    ) -> Result<Option<Waiter>, ()> {
        let Some(client) = self.conns.get_mut(conn) else { return Err(()) };
        let entering_passthrough = pin.passes_through() && !client.passthrough;
        if client.in_flight() > 0 && (client.last_backend != Some(backend) || entering_passthrough) {
            return Err(());
        }
        client.last_backend = Some(backend);
        client.passthrough |= entering_passthrough;
        if let Some(epoch) = write_epoch {
            client.unconfirmed_writes_since.get_or_insert(epoch);
        }
        if client.passthrough {
            return Ok(None);
        }
        let seq = client.replies.await_reply();
        Ok(Some(Waiter::Client { conn, seq, sent: now }))
    }

    /// Cluster mode: a request of `conn` that passes the server's frames straight through (a subscription) goes
    /// on `backend`, its private connection; false when it must wait (replies are still due elsewhere). As
    /// [`Clients::start_request`] for such a request, kept apart from it: a second caller changes how the
    /// compiler inlines that one into the request path (`bench/instructions.sh`).
    pub(crate) fn pass_through(&mut self, conn: ConnId, backend: ConnId) -> bool {
        let Some(client) = self.conns.get_mut(conn) else { return false };
        if client.in_flight() > 0 && (client.last_backend != Some(backend) || !client.passthrough) {
            return false;
        }
        client.last_backend = Some(backend);
        client.passthrough = true;
        true
    }

    /// Who issued the cursor the `SCAN`-family `call` of `conn` continues.
    pub(crate) fn cursor_issuer(&self, conn: ConnId, call: &ScanCall) -> Issuer {
        if call.starts() {
            return Issuer::Anyone;
        }
        match self.conns.get(conn).and_then(|c| c.reads.as_deref()) {
            Some(reads) => reads.cursors.issuer(call),
            None => Issuer::Unknown,
        }
    }

    /// The `SCAN`-family `call` of `conn` went to `server` (that process of it) with reply slot `seq`: its reply's
    /// cursor is remembered.
    pub(crate) fn scan_sent(&mut self, conn: ConnId, seq: u64, call: &ScanCall, server: Process) {
        if let Some(client) = self.conns.get_mut(conn) {
            client.reads.get_or_insert_default().cursors.sent(seq, call, server);
        }
    }

    /// A request of `conn` that may change data went out with reply slot `seq`: its reads stay on the master
    /// until it has replicated.
    pub(crate) fn write_sent(&mut self, conn: ConnId, seq: u64) {
        if let Some(client) = self.conns.get_mut(conn) {
            client.reads.get_or_insert_default().fence.write_sent(seq);
        }
    }

    /// Where the reads of `conn` may go given its writes; `master_offset` is the master's newest offset reading
    /// with its request's serial.
    pub(crate) fn read_floor(&mut self, conn: ConnId, master_offset: Option<(u64, i64)>) -> ReadFloor {
        let reads = self.conns.get_mut(conn).and_then(|c| c.reads.as_deref_mut());
        reads.map_or(ReadFloor::Any, |r| r.fence.floor(master_offset))
    }

    /// The monitor's next offset request will carry `serial`.
    pub(crate) fn set_next_offset_serial(&mut self, serial: u64) {
        self.next_offset_serial = serial;
    }

    /// Whether a reply answered some client's newest write since the last call (then the offsets must be read).
    pub(crate) fn take_write_answered(&mut self) -> bool {
        // Read before written: this runs after every input, and is almost always false.
        if !self.write_answered {
            return false;
        }
        self.write_answered = false;
        true
    }

    /// Takes a reply slot for a request of `conn` answered apart from its connections (an out-of-band request, or
    /// `WAIT`): no order barrier, since its reply is still released in order. None when the client is gone.
    pub(crate) fn reserve_slot(&mut self, conn: ConnId) -> Option<u64> {
        Some(self.conns.get_mut(conn)?.replies.await_reply())
    }

    /// The master epoch of the oldest write of `conn` that no `WAIT` has covered yet, and forgets it: the `WAIT`
    /// now starting covers it.
    pub(crate) fn take_unconfirmed_writes(&mut self, conn: ConnId) -> Option<u64> {
        self.conns.get_mut(conn)?.unconfirmed_writes_since.take()
    }

    /// Whether `conn` authenticated as an admin user.
    pub(crate) fn is_admin_user(&self, conn: ConnId) -> bool {
        self.conns.get(conn).is_some_and(|c| c.auth.is_admin())
    }

    /// Whether `conn` is a connected client.
    pub(crate) fn contains(&self, conn: ConnId) -> bool {
        self.conns.get(conn).is_some()
    }

    /// Whether `conn` passes every frame of its private connection straight through.
    pub(crate) fn is_passthrough(&self, conn: ConnId) -> bool {
        self.conns.get(conn).is_some_and(Client::is_passthrough)
    }

    /// Answers a request of `conn` from the proxy, in order behind the replies it still awaits.
    pub(crate) fn reply_local(&mut self, conn: ConnId, reply: Bytes, out: &mut Outbox) {
        let Some(client) = self.conns.get_mut(conn) else { return };
        // Behind replies still awaited, also in passthrough mode (entered while earlier requests were in flight).
        if client.replies.is_empty() {
            self.send(conn, reply, out);
            return;
        }
        client.replies.push_local(reply);
    }

    /// Fills the reply slot `seq` of `conn` and sends every reply now next in order (in cluster mode, those of reads
    /// whose every reply is in: see [`ReadBatches`]). Returns whether replies went out (the client may then have
    /// room for held requests, or be done).
    pub(crate) fn deliver(&mut self, conn: ConnId, seq: u64, reply: Bytes, out: &mut Outbox) -> bool {
        let Some(client) = self.conns.get_mut(conn) else { return false };
        if let Some(reads) = client.reads.as_deref_mut().filter(|_| client.replies.owes(seq)) {
            reads.cursors.reply(seq, &reply);
            if reads.fence.replied(seq, self.next_offset_serial) {
                self.write_answered = true;
            }
        }
        if let Some(batches) = client.batches.as_deref_mut() {
            if client.replies.len() == 1 && client.replies.take_if_next(seq) {
                // The only reply owed (a client that waits for each reply): out at once.
                batches.clear();
                self.send(conn, reply, out);
                return true;
            }
            let count = batches.fill(&mut client.replies, seq, reply);
            return count > 0 && self.send_ready(conn, count, out);
        }
        if !client.replies.take_if_next(seq) {
            client.replies.fill_later(seq, reply);
            return false;
        }
        self.send(conn, reply, out);
        // Looked up again after each reply: writing one may remove the client (its output limit).
        while let Some(ready) = self.conns.get_mut(conn).and_then(|c| c.replies.pop_ready()) {
            self.send(conn, ready, out);
        }
        true
    }

    /// Cluster mode: a read of `conn` begins (its replies will go out together).
    pub(crate) fn begin_read(&mut self, conn: ConnId) {
        if let Some(client) = self.conns.get_mut(conn) {
            let next_seq = client.replies.next_seq();
            if let Some(batches) = client.batches.as_deref_mut() {
                batches.begin(next_seq);
            }
        }
    }

    /// Cluster mode: sends every reply of `conn` that is in and next in order, without waiting for the rest of
    /// its read (a reply it awaits may be long: a request waits to be sent again). Returns whether any went out.
    pub(crate) fn release_ready(&mut self, conn: ConnId, out: &mut Outbox) -> bool {
        let Some(client) = self.conns.get_mut(conn) else { return false };
        let Some(batches) = client.batches.as_deref_mut() else { return false };
        let count = batches.release(&client.replies, false);
        self.send_ready(conn, count, out)
    }

    /// Sends the next `count` replies of `conn`, which are in (see [`ReadBatches`]). Returns whether any went out.
    #[inline(never)]
    fn send_ready(&mut self, conn: ConnId, count: usize, out: &mut Outbox) -> bool {
        for _ in 0..count {
            // Looked up again after each reply: writing one may remove the client (its output limit).
            let Some(ready) = self.conns.get_mut(conn).and_then(|c| c.replies.pop_ready()) else { break };
            self.send(conn, ready, out);
        }
        count > 0
    }

    /// Whether reply slot `seq` of `conn` is the next reply it is owed (every earlier one is out), so a large reply
    /// for it may be streamed. Never in pass-through, where replies are not counted.
    pub(crate) fn is_next(&self, conn: ConnId, seq: u64) -> bool {
        self.conns.get(conn).is_some_and(|c| c.replies.is_next(seq) && !c.is_passthrough())
    }

    /// Sends a piece of the reply streamed into slot `seq` of `conn` (the slot stays awaited until the last piece
    /// is delivered); a client that is gone, or a slot that is not next, gets nothing.
    pub(crate) fn stream_part(&mut self, conn: ConnId, seq: u64, data: Bytes, out: &mut Outbox) {
        if self.is_next(conn, seq) {
            self.send(conn, data, out);
        }
    }

    /// Whether the runtime reported `conn` blocked on writing and not yet drained.
    pub(crate) fn is_write_blocked(&self, conn: ConnId) -> bool {
        self.conns.get(conn).is_some_and(|c| c.write_blocked)
    }

    /// Sends a frame the server pushed (or passed through) straight to `conn`.
    pub(crate) fn push(&mut self, conn: ConnId, frame: Bytes, out: &mut Outbox) {
        self.send(conn, frame, out);
    }

    /// After replies went out: ends a blocking call, and returns the private connection to release if the
    /// client's state no longer needs it. Then [`Clients::needs_attention`] says whether more is to do.
    pub(crate) fn settle(&mut self, conn: ConnId) -> Option<ConnId> {
        let client = self.conns.get_mut(conn)?;
        if !client.replies.is_empty() {
            return None;
        }
        client.session.blocking = false;
        if !client.session.is_clean() {
            return None;
        }
        let private = client.private.take()?;
        client.last_backend = None;
        Some(private)
    }

    /// Whether `conn` has held requests, a paused read or a pending close: the rare cases after a reply.
    pub(crate) fn needs_attention(&self, conn: ConnId) -> bool {
        self.conns.get(conn).is_some_and(|c| !c.held.is_empty() || c.paused || c.closing)
    }

    fn send(&mut self, conn: ConnId, data: Bytes, out: &mut Outbox) {
        let limit = self.config.client_output_limit;
        let Some(client) = self.conns.get_mut(conn) else { return };
        if client.write_blocked {
            client.bytes_while_blocked += data.len();
            if client.is_passthrough() && client.bytes_while_blocked > limit {
                out.event(Event::ClientOutputLimit { conn });
                self.remove(conn, true, out);
                return;
            }
        }
        out.send(conn, data);
    }

    /// The runtime reports `conn` blocked on writing (`true`) or drained (`false`).
    pub(crate) fn set_write_blocked(&mut self, conn: ConnId, blocked: bool, out: &mut Outbox) {
        let Some(client) = self.conns.get_mut(conn) else { return };
        client.write_blocked = blocked;
        if blocked {
            client.bytes_while_blocked = 0;
        }
        self.update_reading(conn, out);
    }

    /// Pauses reading a client that has too much in flight or does not read its replies, and resumes it after.
    // Once per client read: inlined (bench/instructions.sh).
    #[inline(always)]
    pub(crate) fn update_reading(&mut self, conn: ConnId, out: &mut Outbox) {
        let max = self.config.max_pipeline;
        let Some(client) = self.conns.get_mut(conn) else { return };
        let load = client.in_flight() + client.held.len();
        let blocked = client.write_blocked || client.upload_blocked;
        let should_pause = blocked || load >= max;
        let may_resume = !blocked && load <= max / 2;
        if !client.paused && should_pause {
            client.paused = true;
            out.actions.push_back(Action::SetReadable { conn, readable: false });
        } else if client.paused && may_resume && !client.closing {
            client.paused = false;
            out.actions.push_back(Action::SetReadable { conn, readable: true });
        }
    }

    /// Closes `conn` if it is closing and awaits no reply.
    pub(crate) fn close_if_done(&mut self, conn: ConnId, out: &mut Outbox) {
        let Some(client) = self.conns.get(conn) else { return };
        if client.closing && client.replies.is_empty() {
            self.remove(conn, true, out);
        }
    }

    /// Cluster mode: the subscriber connection `lost` of `owner` was replaced by `backend`, on another node; false
    /// when `lost` was not its private connection.
    pub(crate) fn private_moved(&mut self, owner: ConnId, lost: ConnId, backend: ConnId) -> bool {
        let Some(client) = self.conns.get_mut(owner) else { return false };
        if client.private != Some(lost) {
            return false;
        }
        client.private = Some(backend);
        client.last_backend = Some(backend);
        true
    }

    /// Whether `conn` speaks RESP3 (`HELLO 3`).
    pub(crate) fn speaks_resp3(&self, conn: ConnId) -> bool {
        self.conns.get(conn).is_some_and(|c| c.session.resp3)
    }

    /// The private connection `backend` of `owner` is lost: the state the client built on it is gone, so the
    /// client is closed once its remaining replies (errors among them) are out. Returns whether it was its own.
    pub(crate) fn private_lost(&mut self, owner: ConnId, backend: ConnId) -> bool {
        let Some(client) = self.conns.get_mut(owner) else { return false };
        if client.private != Some(backend) {
            return false;
        }
        client.private = None;
        client.closing = true;
        true
    }

    /// Shutdown: held requests get an error, nothing more is read, and each client closes once its replies are out.
    pub(crate) fn begin_shutdown(&mut self, out: &mut Outbox) {
        let error = resp::error_reply("ERR redis-proxy is shutting down; the command was not sent");
        for conn in self.conns.ids() {
            for _ in 0..self.take_held(conn) {
                self.reply_local(conn, error.clone(), out);
            }
            let Some(client) = self.conns.get_mut(conn) else { continue };
            client.closing = true;
            if !client.paused {
                client.paused = true;
                out.actions.push_back(Action::SetReadable { conn, readable: false });
            }
            self.close_if_done(conn, out);
        }
    }

    /// Closes every client still connected (the shutdown grace is over).
    pub(crate) fn close_all(&mut self, out: &mut Outbox) {
        for conn in self.conns.ids() {
            self.remove(conn, true, out);
        }
    }

    /// Forgets a client; `close` asks the runtime to close it (after flushing what is queued).
    pub(crate) fn remove(&mut self, conn: ConnId, close: bool, out: &mut Outbox) {
        let Some(client) = self.conns.remove(conn) else { return };
        self.count -= 1;
        self.holds.forget(&client.held);
        if close {
            out.close(conn);
        }
        out.event(Event::ClientClosed { conn });
        // A client in pass-through may hold cluster mode's subscriber lines without a private connection.
        if client.private.is_some() || client.passthrough {
            self.departed.push(Departed { client: conn, private: client.private, passthrough: client.passthrough });
        }
    }

    /// Whether clients were removed since the last [`Clients::take_departed`].
    pub(crate) fn any_departed(&self) -> bool {
        !self.departed.is_empty()
    }

    /// The clients removed since the last call, whose private connections the pool must take back.
    pub(crate) fn take_departed(&mut self) -> Vec<Departed> {
        std::mem::take(&mut self.departed)
    }
}

/// A number that spreads clients evenly over shared slots (client ids alternate with backend ids).
fn spread(conn: ConnId) -> usize {
    conn.index() / 2
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::conn::{ConnTable, Lane};
    use bytes::BytesMut;
    use std::time::Duration;

    /// A client table with the default settings plus `settings` (`, "field": value ...`).
    pub(super) fn clients(settings: &str) -> Clients {
        let json = format!(r#"{{"servers": [{{"host": "127.0.0.1", "port": 6379}}]{settings}}}"#);
        Clients::new(&Config::from_json(&json).expect("a valid configuration"))
    }

    /// A new client of `clients`, and the outbox (its events drained).
    pub(super) fn accept(clients: &mut Clients) -> (ConnId, Outbox) {
        let mut out = Outbox::default();
        let conn = clients.accept("127.0.0.1:50000".parse().expect("an address"), false, &mut out);
        out.events.clear();
        (conn, out)
    }

    /// The actions `out` holds, taken.
    pub(super) fn actions(out: &mut Outbox) -> Vec<Action> {
        out.actions.drain(..).collect()
    }

    pub(super) fn send(conn: ConnId, data: &'static str) -> Action {
        Action::Send { conn, data: Bytes::from_static(data.as_bytes()) }
    }

    pub(super) fn error(conn: ConnId, message: &str) -> Action {
        Action::Send { conn, data: resp::error_reply(message) }
    }

    /// `GET key`, as `clients` splits and classifies it for `conn` at `now`.
    pub(super) fn get(clients: &mut Clients, now: Instant, conn: ConnId, key: &str) -> HeldRequest {
        let mut buf = BytesMut::from(format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).as_bytes());
        match clients.next_request(now, conn, &mut buf, &mut Outbox::default()) {
            NextRequest::Request { held, .. } => held,
            NextRequest::None => panic!("a complete request"),
        }
    }

    fn backend() -> ConnId {
        ConnTable::new(Lane::Backend).insert(())
    }

    #[test]
    fn replies_are_written_in_request_order_with_local_ones_between() {
        let mut clients = clients("");
        let (conn, mut out) = accept(&mut clients);
        let Ok(Some(Waiter::Client { seq: first, .. })) =
            clients.start_request(Instant::now(), conn, backend(), Pin::Shared, None)
        else {
            panic!("a reply slot")
        };
        clients.reply_local(conn, Bytes::from_static(b"+local\r\n"), &mut out);
        let second = clients.reserve_slot(conn).expect("connected");
        assert_eq!((first, second), (0, 2));
        assert!(actions(&mut out).is_empty(), "the local reply waits behind the first");
        assert!(!clients.deliver(conn, second, Bytes::from_static(b"+second\r\n"), &mut out));
        assert!(!clients.deliver(conn, 7, Bytes::from_static(b"+unknown\r\n"), &mut out));
        assert!(actions(&mut out).is_empty());
        assert!(clients.is_next(conn, first) && !clients.is_next(conn, second));
        assert!(clients.deliver(conn, first, Bytes::from_static(b"+first\r\n"), &mut out));
        assert_eq!(actions(&mut out), [send(conn, "+first\r\n"), send(conn, "+local\r\n"), send(conn, "+second\r\n")]);
        assert_eq!(clients.forward_state(conn).map(|f| f.in_flight), Some(0));
        clients.reply_local(conn, Bytes::from_static(b"+now\r\n"), &mut out);
        assert_eq!(actions(&mut out), [send(conn, "+now\r\n")], "nothing owed: written at once");
    }

    #[test]
    fn a_streamed_reply_goes_out_only_while_its_slot_is_next() {
        let mut clients = clients("");
        let (conn, mut out) = accept(&mut clients);
        let (first, second) =
            (clients.reserve_slot(conn).expect("a slot"), clients.reserve_slot(conn).expect("a slot"));
        clients.stream_part(conn, second, Bytes::from_static(b"$6\r\nab"), &mut out);
        assert!(actions(&mut out).is_empty(), "it would overtake the first reply");
        clients.stream_part(conn, first, Bytes::from_static(b"$4\r\nab"), &mut out);
        assert_eq!(actions(&mut out), [send(conn, "$4\r\nab")]);
        assert!(clients.is_next(conn, first), "the slot stays owed until its last piece");
        assert!(clients.deliver(conn, first, Bytes::from_static(b"cd\r\n"), &mut out));
        assert!(clients.is_next(conn, second));
        assert_eq!(actions(&mut out), [send(conn, "cd\r\n")]);
    }

    #[test]
    fn a_request_to_another_connection_waits_for_the_replies_in_flight() {
        let mut clients = clients("");
        let (conn, mut out) = accept(&mut clients);
        let mut backends = ConnTable::new(Lane::Backend);
        let (one, other) = (backends.insert(()), backends.insert(()));
        let now = Instant::now();
        assert!(clients.start_request(now, conn, one, Pin::Shared, None).is_ok());
        assert!(clients.start_request(now, conn, one, Pin::Shared, None).is_ok(), "same connection: pipelined");
        assert!(clients.start_request(now, conn, other, Pin::Shared, None).is_err(), "the order barrier");
        assert!(clients.deliver(conn, 0, Bytes::from_static(b"+a\r\n"), &mut out));
        assert!(clients.deliver(conn, 1, Bytes::from_static(b"+b\r\n"), &mut out));
        assert!(clients.start_request(now, conn, other, Pin::Shared, None).is_ok());
    }

    #[test]
    fn reading_pauses_at_max_pipeline_and_resumes_at_half() {
        let mut clients = clients(r#", "max_pipeline": 4"#);
        let (conn, mut out) = accept(&mut clients);
        for _ in 0..3 {
            clients.reserve_slot(conn);
        }
        clients.update_reading(conn, &mut out);
        assert!(actions(&mut out).is_empty(), "3 of 4");
        clients.reserve_slot(conn);
        clients.update_reading(conn, &mut out);
        assert_eq!(actions(&mut out), [Action::SetReadable { conn, readable: false }]);
        assert!(clients.needs_attention(conn));
        clients.deliver(conn, 0, Bytes::from_static(b"+0\r\n"), &mut out);
        clients.update_reading(conn, &mut out);
        assert_eq!(actions(&mut out), [send(conn, "+0\r\n")], "3 left: still paused");
        clients.deliver(conn, 1, Bytes::from_static(b"+1\r\n"), &mut out);
        clients.update_reading(conn, &mut out);
        assert_eq!(actions(&mut out), [send(conn, "+1\r\n"), Action::SetReadable { conn, readable: true }]);
        assert!(!clients.needs_attention(conn));
    }

    #[test]
    fn a_client_that_does_not_read_is_paused_until_drained() {
        let mut clients = clients("");
        let (conn, mut out) = accept(&mut clients);
        clients.set_write_blocked(conn, true, &mut out);
        assert!(clients.is_write_blocked(conn));
        assert_eq!(actions(&mut out), [Action::SetReadable { conn, readable: false }]);
        clients.reply_local(conn, Bytes::from_static(b"+still sent\r\n"), &mut out);
        assert_eq!(actions(&mut out), [send(conn, "+still sent\r\n")], "the runtime queues it");
        clients.set_write_blocked(conn, false, &mut out);
        assert_eq!(actions(&mut out), [Action::SetReadable { conn, readable: true }]);
        clients.set_upload_blocked(conn, true, &mut out);
        assert_eq!(actions(&mut out), [Action::SetReadable { conn, readable: false }]);
        clients.set_upload_blocked(conn, false, &mut out);
        assert_eq!(actions(&mut out), [Action::SetReadable { conn, readable: true }]);
    }

    #[test]
    fn a_pass_through_client_that_does_not_read_is_closed_at_its_output_limit() {
        let mut clients = clients(r#", "client_output_limit": 1024"#);
        let (conn, mut out) = accept(&mut clients);
        let private = backend();
        clients.set_private(conn, private);
        assert_eq!(clients.start_request(Instant::now(), conn, private, Pin::Passthrough, None).ok(), Some(None));
        assert!(clients.is_passthrough(conn));
        clients.set_write_blocked(conn, true, &mut out);
        let frame = Bytes::from(vec![b'x'; 600]);
        clients.push(conn, frame.clone(), &mut out);
        assert!(clients.contains(conn), "600 bytes are within the limit");
        clients.push(conn, frame, &mut out);
        assert!(!clients.contains(conn), "1,200 are not");
        assert!(matches!(actions(&mut out)[..], [_, Action::Send { .. }, Action::Close { conn: c }] if c == conn));
        assert!(out.events.iter().any(|e| matches!(e, Event::ClientOutputLimit { .. })));
        let departed = clients.take_departed();
        assert_eq!(departed.len(), 1);
        assert!(departed[0].private == Some(private) && departed[0].passthrough);
    }

    #[test]
    fn held_requests_expire_in_their_turn_behind_the_replies_in_flight() {
        let mut clients = clients(r#", "hold_ms": 100"#);
        let (conn, mut out) = accept(&mut clients);
        let t0 = Instant::now();
        let seq = clients.reserve_slot(conn).expect("a slot");
        let held = get(&mut clients, t0, conn, "k");
        clients.hold(conn, held, false, &mut out);
        assert!(clients.has_held(conn) && clients.any_held());
        assert_eq!(clients.holding(), [conn]);
        assert_eq!(clients.hold_deadline(), Some(t0 + Duration::from_millis(100)));
        assert_eq!(clients.held_stats().0, 1);
        clients.expire_held(t0 + Duration::from_millis(99), false, &mut out);
        assert!(clients.has_held(conn));
        clients.expire_held(t0 + Duration::from_millis(100), false, &mut out);
        assert!(!clients.has_held(conn));
        assert_eq!(clients.held_stats(), (0, 0));
        assert_eq!(clients.hold_deadline(), None);
        assert_eq!(out.counters.errors.hold_expired, 1);
        assert!(actions(&mut out).is_empty(), "the error waits behind the reply in flight");
        clients.deliver(conn, seq, Bytes::from_static(b"+OK\r\n"), &mut out);
        let masterdown = "MASTERDOWN no master is available: redis-proxy held the request for 100 ms";
        assert_eq!(actions(&mut out), [send(conn, "+OK\r\n"), error(conn, masterdown)]);
    }

    #[test]
    fn held_requests_are_released_in_order() {
        let mut clients = clients("");
        let (conn, mut out) = accept(&mut clients);
        let now = Instant::now();
        for key in ["a", "b"] {
            let held = get(&mut clients, now, conn, key);
            clients.hold(conn, held, true, &mut out);
        }
        let a = clients.pop_held(conn).expect("held");
        assert_eq!(a.request.arg(1), Some(&b"a"[..]));
        clients.unpop_held(conn, a);
        let keys: Vec<Vec<u8>> = std::iter::from_fn(|| clients.pop_held(conn))
            .map(|h| h.request.arg(1).unwrap_or_default().to_vec())
            .collect();
        assert_eq!(keys, [b"a".to_vec(), b"b".to_vec()]);
        assert!(!clients.any_held());
    }

    #[test]
    fn past_the_memory_bound_a_request_is_answered_at_once() {
        let mut clients = clients(r#", "hold_max_bytes": 1, "hold_ms": 250"#);
        let (conn, mut out) = accept(&mut clients);
        let held = get(&mut clients, Instant::now(), conn, "k");
        clients.hold(conn, held, true, &mut out);
        assert!(!clients.has_held(conn));
        let message = "ERR redis-proxy held the request for 250 ms and could not send it";
        assert_eq!(actions(&mut out), [error(conn, message)]);
        assert_eq!(out.counters.errors.hold_expired, 1);
    }

    #[test]
    fn shutdown_answers_held_requests_and_closes_once_the_replies_are_out() {
        let mut clients = clients("");
        let (conn, mut out) = accept(&mut clients);
        let now = Instant::now();
        let seq = clients.reserve_slot(conn).expect("a slot");
        for key in ["a", "b"] {
            let held = get(&mut clients, now, conn, key);
            clients.hold(conn, held, false, &mut out);
        }
        clients.begin_shutdown(&mut out);
        assert_eq!(actions(&mut out), [Action::SetReadable { conn, readable: false }]);
        assert!(clients.contains(conn), "a reply is still owed");
        assert_eq!(clients.held_stats(), (0, 0));
        clients.deliver(conn, seq, Bytes::from_static(b"+OK\r\n"), &mut out);
        clients.close_if_done(conn, &mut out);
        let shutting_down = "ERR redis-proxy is shutting down; the command was not sent";
        assert_eq!(
            actions(&mut out),
            [send(conn, "+OK\r\n"), error(conn, shutting_down), error(conn, shutting_down), Action::Close { conn }]
        );
        assert_eq!(clients.count(), 0);
    }

    #[test]
    fn a_client_that_leaves_releases_its_held_memory() {
        let mut clients = clients("");
        let (conn, mut out) = accept(&mut clients);
        let held = get(&mut clients, Instant::now(), conn, "k");
        clients.hold(conn, held, false, &mut out);
        assert_ne!(clients.held_stats(), (0, 0));
        clients.remove(conn, false, &mut out);
        assert_eq!(clients.held_stats(), (0, 0));
        assert!(!clients.any_held());
        assert!(actions(&mut out).is_empty(), "the runtime reported it closed");
    }
}
