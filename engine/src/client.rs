//! Client connections: each client's reply slots in request order, the requests it has waiting (held), its
//! backpressure, pass-through, and the end of its life. Nothing here chooses a server or a backend connection.

use crate::auth::{ClientAuth, Users, Verdict};
use crate::command::{self, CommandFlags, CommandSpec};
use crate::config::Config;
use crate::conn::{ConnId, ConnTable, Lane};
use crate::contract::{Action, Outbox};
use crate::cursor::{self, Cursors, Issuer, ScanCall};
use crate::event::Event;
use crate::fence::{ReadFence, ReadFloor};
use crate::pool::Waiter;
use crate::resp::{self, PendingLastArg, Request, RequestScanner};
use crate::session::{self, Handling, Pin, Session};
use crate::topology::ServerId;
use crate::upload::{UPLOAD_HEAD_MAX, UPLOAD_MIN};
use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A reply this large (long enough to be streamed), or as many bytes arriving at once from a client, make the
/// client one that moves large values ([`Clients::moves_large_values`]).
pub(crate) const LARGE_VALUE: usize = crate::stream::STREAM_MIN;

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

/// The next thing a client's input holds.
pub(crate) enum NextRequest {
    /// A classified request to run (or hold).
    Request(HeldRequest),
    /// Nothing complete yet, or the client is gone or closing.
    None,
}

/// The start of a request that may be uploaded piece by piece (see [`crate::upload`]).
pub(crate) struct UploadHead {
    /// Everything before the value, classified as the request it starts.
    pub(crate) held: HeldRequest,
    /// How many bytes of the client's buffer that is.
    pub(crate) head_len: usize,
    /// How long the value is.
    pub(crate) body_len: usize,
}

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
    pub(crate) private: ConnId,
    /// The server may still push frames at the private connection: it cannot be cleaned for reuse.
    pub(crate) passthrough: bool,
}

struct Client {
    scanner: RequestScanner,
    session: Session,
    /// What its authentication allows it.
    auth: ClientAuth,
    /// Replies in request order; None while awaited. The front is request number `first_seq`.
    slots: VecDeque<Option<Bytes>>,
    first_seq: u64,
    held: VecDeque<HeldRequest>,
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
    /// Whether `hold_deadlines` has an entry for this client.
    hold_tracked: bool,
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
        self.slots.len()
    }

    fn is_passthrough(&self) -> bool {
        self.passthrough && self.private.is_some()
    }
}

/// Every client connection.
pub(crate) struct Clients {
    conns: ConnTable<Client>,
    count: usize,
    /// Memory taken by held requests over all clients (see [`HeldRequest::cost`]).
    held_bytes: usize,
    /// (deadline, client) in deadline order, for expiring held requests; stale entries are skipped.
    hold_deadlines: VecDeque<(Instant, ConnId)>,
    /// Clients removed since the coordinator last asked, whose private connections it must hand back.
    departed: Vec<Departed>,
    /// Set when a reply answered a client's newest write (read fences need fresh offsets); taken by the
    /// coordinator.
    write_answered: bool,
    /// The serial the monitor's next offset request carries (a fence's proof must come from it or a later one);
    /// kept current by the coordinator.
    next_offset_serial: u64,
    /// What a held request's error ends with: why each server cannot be used (see
    /// [`Clients::set_obstacles`]).
    obstacles: String,
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
    hold: Duration,
    hold_max_bytes: usize,
    allow_topology_commands: bool,
    users: Users,
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
            hold: config.hold,
            hold_max_bytes: config.hold_max_bytes,
            allow_topology_commands: config.allow_topology_commands,
            users: Users::new(&config.client_users),
        }
    }
}

impl Clients {
    /// No clients yet, with the limits of `config`.
    pub(crate) fn new(config: &Config) -> Clients {
        Clients {
            conns: ConnTable::new(Lane::Client),
            count: 0,
            held_bytes: 0,
            hold_deadlines: VecDeque::new(),
            departed: Vec::new(),
            write_answered: false,
            next_offset_serial: 0,
            obstacles: String::new(),
            config: ClientLimits::from(config),
        }
    }

    /// Applies the limits of a reloaded `config` (`pool_size` and the protocol limits cannot change live: the
    /// caller refuses a config that changes them).
    pub(crate) fn set_limits(&mut self, config: &Config) {
        self.config = ClientLimits::from(config);
    }

    /// Clients connected.
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// Registers a new client from `peer`; turned away at once when shutting down or over `max_clients`.
    pub(crate) fn accept(&mut self, peer: SocketAddr, shutting_down: bool, out: &mut Outbox) -> ConnId {
        let conn = self.conns.insert(Client {
            scanner: RequestScanner::new(self.config.limits),
            session: Session::default(),
            auth: ClientAuth::new(&self.config.users),
            slots: VecDeque::new(),
            first_seq: 0,
            held: VecDeque::new(),
            private: None,
            last_backend: None,
            shared_slot: 0,
            paused: false,
            write_blocked: false,
            upload_blocked: false,
            bytes_while_blocked: 0,
            hold_tracked: false,
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

    /// Splits and classifies the next request off `buf`. A protocol error answers the client (after errors for
    /// what it has held), closes it and returns None.
    pub(crate) fn next_request(
        &mut self,
        now: Instant,
        conn: ConnId,
        buf: &mut BytesMut,
        out: &mut Outbox,
    ) -> NextRequest {
        loop {
            let Some(client) = self.conns.get_mut(conn).filter(|c| !c.closing) else {
                buf.clear();
                return NextRequest::None;
            };
            let request = match client.scanner.next_request(buf) {
                Ok(Some(request)) => request,
                Ok(None) => return NextRequest::None,
                Err(error) => {
                    buf.clear();
                    self.protocol_error(conn, format!("ERR {error}"), out);
                    return NextRequest::None;
                }
            };
            if request.is_empty() {
                continue;
            }
            let pinned = client.private.is_some() || client.session.current_pin() != Pin::Shared;
            let mut request = request;
            let spec = command::resolve(request.arg(0).unwrap_or_default(), request.arg(1));
            if client.auth.restricted() || spec.is_some_and(|s| s.flags.contains(command::CommandFlags::NO_AUTH)) {
                match client.auth.check(&self.config.users, &request, spec) {
                    Verdict::Pass => {}
                    Verdict::Rewritten(rewritten) => request = rewritten,
                    Verdict::Handle(handling) => {
                        // Redis fails EXEC of a transaction in which it refused a command while queuing.
                        if matches!(handling, Handling::Refuse(_)) {
                            client.session.multi_refused |= client.session.in_multi;
                        }
                        let resp3 = client.session.resp3;
                        return NextRequest::Request(HeldRequest { request, spec, handling, since: now, resp3 });
                    }
                }
            }
            let handling = client.session.classify(&request, spec, pinned, self.config.allow_topology_commands);
            let resp3 = client.session.resp3;
            return NextRequest::Request(HeldRequest { request, spec, handling, since: now, resp3 });
        }
    }

    /// The start of `conn`'s request in `buf` when it may be uploaded: its last argument is a large value still
    /// arriving, everything before it is here, and the client's state lets it go on a private connection now (a
    /// plain command, authenticated, nothing held and no order barrier). None otherwise: it is held whole.
    #[cold]
    #[inline(never)]
    pub(crate) fn upload_head(&self, now: Instant, conn: ConnId, buf: &BytesMut) -> Option<UploadHead> {
        let client = self.conns.get(conn)?;
        let PendingLastArg { head_len, body_len, args } = client.scanner.pending_last_arg()?;
        let ready = !client.closing
            && client.held.is_empty()
            && !client.passthrough
            && !client.auth.restricted()
            && (client.private.is_some() || client.in_flight() == 0);
        if body_len < UPLOAD_MIN || head_len > UPLOAD_HEAD_MAX || args.len() < 2 || !ready {
            return None;
        }
        let request = Request::from_head(Bytes::copy_from_slice(&buf[..head_len]), args);
        let spec = command::resolve(request.arg(0)?, request.arg(1))?;
        let special = CommandFlags::BLOCKING | CommandFlags::NO_AUTH;
        // A `SCAN` whose cursor the proxy cannot place is answered with an error instead of being sent: an upload
        // must go out once started.
        if session::may_be_special(spec.name) || spec.flags.intersects(special) || cursor::scan_call(&request).is_some()
        {
            return None;
        }
        let handling = Handling::Forward(client.session.current_pin().max(Pin::Transient));
        let held = HeldRequest { request, spec: Some(spec), handling, since: now, resp3: client.session.resp3 };
        Some(UploadHead { held, head_len, body_len })
    }

    /// The head of `conn`'s request went on as an upload: it leaves `buf`, and the scanner starts afresh after
    /// the value.
    pub(crate) fn upload_started(&mut self, conn: ConnId, buf: &mut BytesMut, head_len: usize) {
        if let Some(client) = self.conns.get_mut(conn) {
            buf.advance(head_len);
            client.scanner.restart();
        }
    }

    /// The backend connection `conn`'s upload goes on is blocked on writing (`true`) or drained (`false`).
    pub(crate) fn set_upload_blocked(&mut self, conn: ConnId, blocked: bool, out: &mut Outbox) {
        let Some(client) = self.conns.get_mut(conn) else { return };
        client.upload_blocked = blocked;
        self.update_reading(conn, out);
    }

    fn protocol_error(&mut self, conn: ConnId, message: String, out: &mut Outbox) {
        out.event(Event::ClientProtocolError { conn, message: message.clone() });
        // Requests held so far were never sent, and the client is about to be closed: each gets an error now, so
        // that the protocol error stays the last reply, in the order of the stream.
        let dropped = self.take_held(conn);
        for _ in 0..dropped {
            self.reply_local(
                conn,
                resp::error_reply("ERR redis-proxy did not send this command: a protocol error followed it"),
                out,
            );
        }
        self.reply_local(conn, resp::error_reply(&message), out);
        self.close_after_replies(conn, out);
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
        let dropped = std::mem::take(&mut client.held);
        self.held_bytes -= dropped.iter().map(HeldRequest::cost).sum::<usize>();
        dropped.len()
    }

    /// Whether `conn` has requests waiting (then a new one must wait behind them).
    pub(crate) fn has_held(&self, conn: ConnId) -> bool {
        self.conns.get(conn).is_some_and(|c| !c.held.is_empty())
    }

    /// How many requests are held over all clients, and the memory they take (for the status snapshot).
    pub(crate) fn held_stats(&self) -> (usize, usize) {
        (self.conns.iter().map(|(_, c)| c.held.len()).sum(), self.held_bytes)
    }

    /// Whether any client has requests waiting.
    pub(crate) fn any_held(&self) -> bool {
        self.held_bytes > 0
    }

    /// The clients with held requests, oldest deadline first.
    pub(crate) fn holding(&self) -> Vec<ConnId> {
        self.hold_deadlines.iter().map(|(_, c)| *c).collect()
    }

    /// The earliest instant a held request expires.
    pub(crate) fn hold_deadline(&self) -> Option<Instant> {
        self.hold_deadlines.front().map(|(at, _)| *at)
    }

    /// Queues a request that cannot go out yet; past the global bound it gets an error instead, in its turn: behind
    /// the client's earlier held requests, in place of the request (whose bytes are dropped).
    pub(crate) fn hold(&mut self, conn: ConnId, mut held: HeldRequest, master_known: bool, out: &mut Outbox) {
        if self.held_bytes + held.cost() > self.config.hold_max_bytes {
            out.event(Event::RequestsExpired { count: 1 });
            let message = self.hold_error(master_known);
            if !self.has_held(conn) {
                self.reply_local(conn, resp::error_reply(&message), out);
                return;
            }
            // A marker of a few bytes; the client's reading is paused by `max_pipeline`, which bounds them.
            held = HeldRequest {
                request: Request::from_args::<&[u8]>(&[]),
                spec: None,
                handling: Handling::Refuse(message),
                ..held
            };
        }
        let deadline = held.since + self.config.hold;
        let Some(client) = self.conns.get_mut(conn) else { return };
        self.held_bytes += held.cost();
        client.held.push_back(held);
        if !client.hold_tracked {
            client.hold_tracked = true;
            let at = self.hold_deadlines.partition_point(|(d, _)| *d <= deadline);
            self.hold_deadlines.insert(at, (deadline, conn));
        }
    }

    /// The oldest held request of `conn`, taken off its queue (None when there is none, or when the client is
    /// closing: after QUIT nothing more is sent, as Redis reads nothing after it).
    pub(crate) fn pop_held(&mut self, conn: ConnId) -> Option<HeldRequest> {
        let client = self.conns.get_mut(conn)?;
        if client.closing {
            self.take_held(conn);
            return None;
        }
        let held = client.held.pop_front()?;
        self.held_bytes -= held.cost();
        Some(held)
    }

    /// Puts back a request [`Clients::pop_held`] gave out that still cannot run.
    pub(crate) fn unpop_held(&mut self, conn: ConnId, held: HeldRequest) {
        let Some(client) = self.conns.get_mut(conn) else { return };
        self.held_bytes += held.cost();
        client.held.push_front(held);
    }

    /// Sets what the error of a held request that expires ends with: ` (address: reason; ...)`, why each server
    /// cannot be used, or nothing; kept current by the coordinator while requests are held.
    pub(crate) fn set_obstacles(&mut self, obstacles: String) {
        self.obstacles = obstacles;
    }

    fn hold_error(&self, master_known: bool) -> String {
        let ms = self.config.hold.as_millis();
        let why = &self.obstacles;
        if master_known {
            format!("ERR redis-proxy held the request for {ms} ms and could not send it{why}")
        } else {
            format!("MASTERDOWN no master is available: redis-proxy held the request for {ms} ms{why}")
        }
    }

    /// Answers every held request whose time is up with an error.
    pub(crate) fn expire_held(&mut self, now: Instant, master_known: bool, out: &mut Outbox) {
        let mut expired = 0;
        let hold = self.config.hold;
        while let Some(&(deadline, conn)) = self.hold_deadlines.front() {
            if deadline > now {
                break;
            }
            self.hold_deadlines.pop_front();
            let error = resp::error_reply(&self.hold_error(master_known));
            if let Some(client) = self.conns.get_mut(conn) {
                client.hold_tracked = false;
            }
            while let Some(client) = self.conns.get_mut(conn) {
                let Some(front) = client.held.front() else { break };
                if front.since + hold > now {
                    // Its own deadline governs from here; the entry just popped belonged to an older front.
                    let next = front.since + hold;
                    client.hold_tracked = true;
                    let at = self.hold_deadlines.partition_point(|(d, _)| *d <= next);
                    self.hold_deadlines.insert(at, (next, conn));
                    break;
                }
                if let Some(expired_request) = client.held.pop_front() {
                    self.held_bytes -= expired_request.cost();
                }
                expired += 1;
                self.reply_local(conn, error.clone(), out);
            }
            self.update_reading(conn, out);
        }
        if expired > 0 {
            out.event(Event::RequestsExpired { count: expired });
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
        let seq = client.first_seq + client.slots.len() as u64;
        client.slots.push_back(None);
        Ok(Some(Waiter::Client { conn, seq, sent: now }))
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

    /// The `SCAN`-family `call` of `conn` went to `server` with reply slot `seq`: its reply's cursor is remembered.
    pub(crate) fn scan_sent(&mut self, conn: ConnId, seq: u64, call: &ScanCall, server: ServerId) {
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
        let client = self.conns.get_mut(conn)?;
        client.slots.push_back(None);
        Some(client.first_seq + client.slots.len() as u64 - 1)
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
        if client.slots.is_empty() {
            self.send(conn, reply, out);
            return;
        }
        client.slots.push_back(Some(reply));
    }

    /// Fills the reply slot `seq` of `conn` and sends every reply now next in order. Returns whether replies went
    /// out (the client may then have room for held requests, or be done).
    pub(crate) fn deliver(&mut self, conn: ConnId, seq: u64, reply: Bytes, out: &mut Outbox) -> bool {
        let Some(client) = self.conns.get_mut(conn) else { return false };
        let Some(index) = seq.checked_sub(client.first_seq).map(|i| i as usize) else { return false };
        if index >= client.slots.len() {
            return false;
        }
        if let Some(reads) = client.reads.as_deref_mut() {
            reads.cursors.reply(seq, &reply);
            if reads.fence.replied(seq, self.next_offset_serial) {
                self.write_answered = true;
            }
        }
        if index > 0 {
            client.slots[index] = Some(reply);
            return false;
        }
        client.slots.pop_front();
        client.first_seq += 1;
        self.send(conn, reply, out);
        while let Some(client) = self.conns.get_mut(conn) {
            let Some(ready) = client.slots.front_mut().and_then(Option::take) else { break };
            client.slots.pop_front();
            client.first_seq += 1;
            self.send(conn, ready, out);
        }
        true
    }

    /// Whether reply slot `seq` of `conn` is the next reply it is owed (every earlier one is out), so a large reply
    /// for it may be streamed. Never in pass-through, where replies are not counted.
    pub(crate) fn is_next(&self, conn: ConnId, seq: u64) -> bool {
        self.conns.get(conn).is_some_and(|c| c.first_seq == seq && !c.is_passthrough())
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
        if !client.slots.is_empty() {
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
        if client.closing && client.slots.is_empty() {
            self.remove(conn, true, out);
        }
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
        self.held_bytes -= client.held.iter().map(HeldRequest::cost).sum::<usize>();
        if close {
            out.close(conn);
        }
        out.event(Event::ClientClosed { conn });
        if let Some(private) = client.private {
            self.departed.push(Departed { private, passthrough: client.is_passthrough() });
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
