//! Cluster mode's request and reply paths: a request routed by its keys' slot (split by slot, or sent to every
//! primary, when it must be; `SCAN` walked over the primaries), its reply checked for a redirection and the
//! request sent again when it is one. Transactions are in `cluster_transaction`, following the map in
//! `cluster_map`.

use super::*;
use crate::cluster::{Cluster, MAX_REDIRECTS};
use crate::cluster_scan::{self, Position};
use crate::cluster_self::ProxyNode;
use crate::command::CommandSpec;
use crate::fanout::{Answer, Fanout};
use crate::key_slots::{self, KeySlots, Merge};
use crate::redirect::{redirect_of, Redirect};
use crate::routed::{Aim, Resend, Routed};
use bytes::Bytes;
use smallvec::SmallVec;

/// How a request is carried out in a cluster.
enum Plan {
    /// To one slot's primary, or any primary.
    One(Aim),
    /// Split by slot, the replies merged.
    Split(Merge),
    /// To every primary, the replies merged.
    Everywhere(Merge),
    /// The next step of a `SCAN` over every primary.
    Scan,
    /// Answered here with this reply.
    Local(Bytes),
    /// Answered here with this error.
    Refuse(String),
}

/// What a command means in a cluster when its keys do not decide (whole-keyspace and cluster commands); `node` is
/// the proxy as cluster-aware clients see it.
fn keyless_plan(spec: &CommandSpec, request: &crate::resp::Request, node: &ProxyNode) -> Option<Plan> {
    match spec.name {
        "dbsize" => Some(Plan::Everywhere(Merge::Sum)),
        "flushall" | "flushdb" => Some(Plan::Everywhere(Merge::Ok)),
        "script|load" | "script|flush" | "function|load" | "function|flush" | "function|delete" => {
            Some(Plan::Everywhere(Merge::Same))
        }
        "scan" => Some(Plan::Scan),
        "keys" => Some(Plan::Everywhere(Merge::Concat)),
        "randomkey" => Some(Plan::Everywhere(Merge::AnyKey)),
        "info" if request.arg_count() == 2 && request.arg(1).is_some_and(|a| a.eq_ignore_ascii_case(b"keyspace")) => {
            Some(Plan::Everywhere(Merge::Keyspace))
        }
        "cluster|slots" => Some(Plan::Local(node.slots())),
        "cluster|shards" => Some(Plan::Local(node.shards())),
        "cluster|nodes" => Some(Plan::Local(node.nodes())),
        "cluster|myid" => Some(Plan::Local(node.myid())),
        "cluster|info" | "cluster|keyslot" => None,
        "cluster|countkeysinslot" | "cluster|getkeysinslot" => {
            let slot = request.arg(2).and_then(|a| std::str::from_utf8(a).ok()?.parse::<u16>().ok());
            slot.filter(|s| usize::from(*s) < crate::slot::SLOTS).map(|s| Plan::One(Aim::Slot(s)))
        }
        name if name.starts_with("cluster") => Some(Plan::Refuse(format!(
            "ERR redis-proxy refuses CLUSTER {}: it would change the cluster or one node; send it to the node \
             directly",
            name.trim_start_matches("cluster|").to_uppercase()
        ))),
        _ => None,
    }
}

/// The client's reply to a `SCAN` step sent at `position`: the primary's keys, with the cursor of the walk's next
/// step (the same primary further on, the next primary, or past the last one; a new walk when the map changed).
/// The step after a finished primary waits for a fresh map (see [`Cluster::scan_may_go_on`]); so does the end,
/// which a step past the last primary confirms.
fn scan_reply(cluster: &mut Cluster, position: Option<Position>, reply: Bytes) -> Bytes {
    let (Some(position), Some((next, keys))) = (position, cluster_scan::split_reply(&reply)) else { return reply };
    let version = cluster.scan_version();
    let cursor = if !position.follows(version) {
        Position { shard: 0, version, cursor: 0 }.encode()
    } else if next != 0 {
        Position { cursor: next, ..position }.encode()
    } else {
        cluster.scan_finished_primary();
        Position { shard: position.shard + 1, version, cursor: 0 }.encode()
    };
    match cursor {
        Some(cursor) => cluster_scan::reply(cursor, keys),
        None => resp::error_reply("ERR redis-proxy: a primary's SCAN cursor is too large to carry in the cluster's"),
    }
}

/// The client's error when a redirection names a node the proxy cannot take as a server.
fn unreachable_node(address: &ServerAddress) -> Bytes {
    resp::error_reply(&format!("ERR redis-proxy: the cluster sent the request to {address}, which it cannot use"))
}

/// Whether `spec` only reads: such a request is sent again when its connection breaks before the reply.
fn only_reads(spec: Option<&CommandSpec>) -> bool {
    spec.is_some_and(|s| s.flags.contains(CommandFlags::READONLY) && !s.flags.contains(CommandFlags::WRITE))
}

/// The delay before resending a request that met `TRYAGAIN` or `CLUSTERDOWN`, or found no primary: short at
/// first (a migration moves one key at a time), longer as tries add up.
fn retry_delay(tries: u8) -> Duration {
    Duration::from_millis((5u64 << tries.min(5)).min(100))
}

impl Engine {
    /// Runs a request in cluster mode: as [`Engine::execute`] (true: done; false: hold it).
    #[inline(never)]
    pub(super) fn execute_in_cluster(&mut self, now: Instant, conn: ConnId, held: &HeldRequest) -> bool {
        let transaction_command = held.spec.map(|s| s.name).filter(|n| matches!(*n, "multi" | "exec" | "discard"));
        let plan = match &held.handling {
            Handling::Forward(_) if transaction_command.is_some() || self.queuing(conn) => {
                return self.transaction_step(now, conn, held, transaction_command);
            }
            Handling::Forward(_) if held.spec.is_some_and(|s| matches!(s.name, "watch" | "unwatch" | "reset")) => {
                return self.watch_step(now, conn, held);
            }
            Handling::AbortExec => {
                // A command the proxy refused while queuing: Redis would abort too.
                if let Some(cluster) = self.cluster.as_deref_mut() {
                    cluster.transactions.discard(conn);
                }
                Plan::Refuse("EXECABORT Transaction discarded because of previous errors.".into())
            }
            Handling::Forward(Pin::Shared) => self.cluster_plan(conn, held),
            Handling::Forward(Pin::Passthrough) => return self.cluster_passthrough(now, conn, held),
            Handling::Forward(_) => Plan::Refuse(format!(
                "ERR redis-proxy: {} is not supported in cluster mode yet (it would hold a connection to one node, \
                 as blocking commands do)",
                held.spec.map_or("this command", |s| s.name).to_uppercase()
            )),
            Handling::Wait { replicas, timeout } => return self.start_cluster_wait(now, conn, *replicas, *timeout),
            Handling::OutOfBand => Plan::Refuse(
                "ERR redis-proxy: SCRIPT KILL and FUNCTION KILL are not supported in cluster mode yet".into(),
            ),
            _ => return self.execute_locally(now, conn, held),
        };
        if !matches!(plan, Plan::Refuse(_))
            && self.cluster.as_deref().is_some_and(|c| c.requests.resend_waiting_for(conn))
        {
            // An earlier request of the client waits to be sent again: this one must not overtake it.
            return false;
        }
        match plan {
            Plan::Refuse(message) => {
                self.out.counters.request(Target::Proxy, Class::of(held.spec));
                self.clients.reply_local(conn, resp::error_reply(&message), &mut self.out);
                true
            }
            Plan::One(aim) => self.send_one(now, conn, held, aim, None),
            Plan::Scan => self.scan_step(now, conn, held),
            Plan::Local(reply) => {
                self.out.counters.request(Target::Proxy, Class::of(held.spec));
                self.clients.reply_local(conn, reply, &mut self.out);
                true
            }
            Plan::Split(merge) => {
                let parts = key_slots::split(&held.request, merge);
                let aims = parts.iter().map(|p| Aim::Slot(p.slot)).collect();
                let (requests, positions) = parts.into_iter().map(|p| (p.request, p.positions)).unzip();
                self.send_fanout(now, conn, held, merge, aims, requests, positions)
            }
            Plan::Everywhere(merge) => {
                let Some(primaries) = self.cluster.as_ref().and_then(|c| c.every_primary(self.monitor.views())) else {
                    return false;
                };
                let aims: Vec<Aim> = primaries.into_iter().map(Aim::Server).collect();
                let requests = vec![held.request.frame().clone(); aims.len()];
                let positions = vec![Vec::new(); aims.len()];
                self.send_fanout(now, conn, held, merge, aims, requests, positions)
            }
        }
    }

    /// Starts a `WAIT` once every earlier request of the client is answered (false: hold it until then): it
    /// counts the replicas of every primary the client wrote to, or of every primary when it wrote nothing yet
    /// (see [`crate::wait`]).
    fn start_cluster_wait(&mut self, now: Instant, conn: ConnId, replicas: u64, timeout: Option<Duration>) -> bool {
        let Some(state) = self.clients.forward_state(conn) else { return true };
        let Some(cluster) = self.cluster.as_deref() else { return true };
        if state.in_flight > 0 || cluster.map().shards().is_empty() {
            return false;
        }
        let mut primaries = cluster.writes.of(conn);
        if primaries.is_empty() {
            primaries = cluster.map().shards().iter().map(|s| s.primary).collect();
        }
        let Some(seq) = self.clients.reserve_slot(conn) else { return true };
        self.out.counters.request(Target::Proxy, Class::Other);
        self.waits.add_in_cluster(now, conn, seq, replicas, timeout, primaries);
        self.request_offsets(now);
        true
    }

    /// Sends a request of a subscribed client (`SUBSCRIBE`, `PSUBSCRIBE` and what follows them) on its private
    /// connection, opened to some primary on its first subscription: a cluster delivers every `PUBLISH` to every
    /// node, and the server's pushes pass straight to the client. False: wait (no primary, or earlier replies
    /// are still due on other connections).
    fn cluster_passthrough(&mut self, now: Instant, conn: ConnId, held: &HeldRequest) -> bool {
        if let Some(done) = self.shard_pubsub_step(now, conn, held) {
            return done;
        }
        let Some(state) = self.clients.forward_state(conn) else { return true };
        let backend = match state.private {
            Some(backend) => backend,
            None if state.in_flight > 0 => return false,
            None => {
                let Some(server) = self.cluster_target(now, Aim::AnyPrimary, conn.index()) else { return false };
                let Some(backend) = self.pool.acquire_private(server, conn, held.resp3, &mut self.out) else {
                    return false;
                };
                self.clients.set_private(conn, backend);
                backend
            }
        };
        if !self.clients.pass_through(conn, backend) {
            return false;
        }
        self.out.counters.request(Target::Master, Class::of(held.spec));
        if let Some(cluster) = self.cluster.as_deref_mut() {
            cluster.subscriptions.sent(conn, &held.request);
        }
        // Every frame the server sends on it goes to the client as it comes: no waiter.
        self.pool.send(backend, &[], held.request.frame().clone(), &mut self.out);
        true
    }

    /// The subscriber connection `lost` of `owner`, to the node `lost_server`, is gone: subscribes the client
    /// again, to what it follows, on another usable primary. The server's confirmations are read by nobody when
    /// the lost connection was `connected` (the client had them), and go to the client when it never opened (its
    /// subscriptions never reached a server). False when that cannot be done (not a subscriber in cluster mode,
    /// nothing followed, no other primary): then the client is closed, as in the other modes.
    pub(super) fn subscribe_elsewhere(
        &mut self,
        owner: ConnId,
        lost: ConnId,
        lost_server: ServerId,
        connected: bool,
    ) -> bool {
        let Some(cluster) = self.cluster.as_deref() else { return false };
        if !self.clients.is_passthrough(owner) {
            return false;
        }
        let Some(again) = cluster.subscriptions.resubscribe(owner) else { return false };
        let others: Vec<ServerId> = cluster
            .map()
            .shards()
            .iter()
            .filter(|s| !s.failed && s.primary != lost_server)
            .map(|s| s.primary)
            .filter(|p| self.monitor.views().get(*p).is_some_and(|v| v.is_routable()))
            .collect();
        let Some(&server) = others.get(owner.index() % others.len().max(1)) else { return false };
        let resp3 = self.clients.speaks_resp3(owner);
        let Some(backend) = self.pool.acquire_private(server, owner, resp3, &mut self.out) else { return false };
        if !self.clients.private_moved(owner, lost, backend) {
            self.pool.release_private(backend, false, &mut self.out);
            return false;
        }
        let waiters = vec![Waiter::Ignore; if connected { again.confirmations } else { 0 }];
        self.pool.send(backend, &waiters, again.data, &mut self.out);
        if let Some(address) = self.monitor.address(server).cloned() {
            self.out.event(Event::SubscriberMoved { client: owner, to: address, subscriptions: again.confirmations });
        }
        true
    }

    /// Where a forwarded request of `conn` goes in the cluster, by its keys (in `readsToSlaves`, a read to a
    /// replica of its slot's shard, unless the client wrote to that shard and `read_your_writes` keeps its reads
    /// on the primary).
    fn cluster_plan(&self, conn: ConnId, held: &HeldRequest) -> Plan {
        let Some(spec) = held.spec else { return Plan::One(Aim::AnyPrimary) };
        match key_slots::key_slots(&held.request, spec) {
            KeySlots::One(slot) if self.router.replica_read(held.spec, false) => {
                let cluster = self.cluster.as_deref();
                let wrote_there = cluster.is_some_and(|c| {
                    let primary = c.map().shard_of(slot).map(|s| s.primary);
                    primary.is_some_and(|p| c.writes.of(conn).contains(&p))
                });
                let replica = !(wrote_there && self.router.read_your_writes());
                Plan::One(if replica { Aim::Replica(slot) } else { Aim::Slot(slot) })
            }
            KeySlots::One(slot) => Plan::One(Aim::Slot(slot)),
            KeySlots::Keyless => {
                let node = self.cluster.as_deref().map(|c| &c.proxy_node);
                node.and_then(|node| keyless_plan(spec, &held.request, node)).unwrap_or(Plan::One(Aim::AnyPrimary))
            }
            KeySlots::Cross => match key_slots::split_merge(spec) {
                Some(merge) => Plan::Split(merge),
                None => Plan::Refuse("CROSSSLOT Keys in request don't hash to the same slot".to_string()),
            },
        }
    }

    /// The server a routed request goes to now (None: no usable primary, wait).
    pub(super) fn cluster_target(&mut self, now: Instant, aim: Aim, spread: usize) -> Option<ServerId> {
        let cluster = self.cluster.as_deref()?;
        let views = self.monitor.views();
        match aim {
            Aim::Slot(slot) => cluster.primary_for(slot, views),
            Aim::Replica(slot) => {
                let primary = cluster.primary_for(slot, views)?;
                let replicas = cluster.map().shard_of(slot).map_or(&[][..], |s| &s.replicas[..]);
                Some(self.router.cluster_replica(now, views, primary, replicas).unwrap_or(primary))
            }
            Aim::AnyPrimary => cluster.any_primary(views, spread),
            Aim::Server(server) => views.get(server).is_some_and(|v| v.is_routable()).then_some(server),
        }
    }

    /// Sends a request to one slot's primary (false: none can be used now; hold it).
    /// Sends a `SCAN` step of the walk over every primary the client's cursor says (false: no primary can be
    /// used now; hold it).
    fn scan_step(&mut self, now: Instant, conn: ConnId, held: &HeldRequest) -> bool {
        let Some(cluster) = self.cluster.as_deref() else { return true };
        let Some(cursor) = cluster_scan::cursor_of(&held.request) else {
            // Not a number: the server answers with its own error.
            return self.send_one(now, conn, held, Aim::AnyPrimary, None);
        };
        let version = cluster.scan_version();
        let mut position = Position::decode(cursor, version);
        let primaries = cluster.scan_primaries();
        if position.cursor == 0 && position.shard > 0 && position.follows(version) && !cluster.scan_may_go_on() {
            // The walk goes on to another primary (or ends): first a fresh map, to see a slot that moved.
            if let Some(cluster) = self.cluster.as_deref_mut() {
                cluster.want_refresh();
            }
            return false;
        }
        let version = cluster.scan_version();
        if position.follows(version) && position.cursor == 0 && position.shard == primaries.len() {
            // Past the last primary, on an unchanged map: the walk is over.
            self.out.counters.request(Target::Proxy, Class::of(held.spec));
            self.clients.reply_local(conn, Bytes::from_static(b"*2\r\n$1\r\n0\r\n*0\r\n"), &mut self.out);
            return true;
        }
        if !position.follows(version) || position.shard >= primaries.len() {
            // The map changed since the walk began: it starts again, so that no key is missed.
            position = Position { shard: 0, version, cursor: 0 };
        }
        let Some(&server) = primaries.get(position.shard) else { return false };
        let scan = HeldRequest {
            request: cluster_scan::with_cursor(&held.request, position.cursor),
            spec: held.spec,
            handling: held.handling.clone(),
            since: held.since,
            resp3: held.resp3,
        };
        self.send_one(now, conn, &scan, Aim::Server(server), Some(position))
    }

    fn send_one(&mut self, now: Instant, conn: ConnId, held: &HeldRequest, aim: Aim, scan: Option<Position>) -> bool {
        let Some(state) = self.clients.forward_state(conn) else { return true };
        let shared_slot = state.shared_slot;
        let Some(server) = self.cluster_target(now, aim, conn.index()) else { return false };
        let Some(seq) = self.clients.reserve_slot(conn) else { return true };
        self.out.counters.request(Target::Master, Class::of(held.spec));
        let routed = Routed {
            read_only: only_reads(held.spec),
            scan,
            ..Routed::new(conn, seq, held.request.frame().clone(), aim, held.resp3, shared_slot, now)
        };
        let Some(cluster) = self.cluster.as_deref_mut() else { return true };
        let ticket = cluster.requests.add(routed);
        self.send_routed(now, ticket, Some(server), false);
        true
    }

    /// Sends the parts of a split request (false: some part has no usable primary now; hold it whole).
    #[allow(clippy::too_many_arguments)]
    fn send_fanout(
        &mut self,
        now: Instant,
        conn: ConnId,
        held: &HeldRequest,
        merge: Merge,
        aims: Vec<Aim>,
        requests: Vec<Bytes>,
        positions: Vec<Vec<usize>>,
    ) -> bool {
        let Some(state) = self.clients.forward_state(conn) else { return true };
        let shared_slot = state.shared_slot;
        let mut targets = Vec::with_capacity(aims.len());
        for aim in &aims {
            let Some(target) = self.cluster_target(now, *aim, 0) else { return false };
            targets.push(target);
        }
        let Some(seq) = self.clients.reserve_slot(conn) else { return true };
        self.out.counters.request(Target::Master, Class::of(held.spec));
        let Some(cluster) = self.cluster.as_deref_mut() else { return true };
        cluster.counts.fanouts += 1;
        let fanout = cluster.requests.add_fanout(Fanout::new(Answer::Client { conn, seq }, merge, positions));
        let mut tickets = Vec::with_capacity(targets.len());
        for (index, (aim, request)) in aims.into_iter().zip(requests).enumerate() {
            let routed = Routed {
                part: Some((fanout, index)),
                read_only: only_reads(held.spec),
                ..Routed::new(conn, seq, request, aim, held.resp3, shared_slot, now)
            };
            tickets.push(cluster.requests.add(routed));
        }
        for (ticket, server) in tickets.into_iter().zip(targets) {
            self.send_routed(now, ticket, Some(server), false);
        }
        true
    }

    /// Sends the request of `ticket` to `server` (None: where its aim says now); `asking` sends `ASKING` first on
    /// the same connection. When no server or connection can be had, it is resent a little later.
    pub(super) fn send_routed(&mut self, now: Instant, ticket: u32, server: Option<ServerId>, asking: bool) {
        let Some(routed) = self.cluster.as_deref_mut().and_then(|c| c.requests.get_mut(ticket)) else { return };
        let (aim, resp3, shared_slot, client) = (routed.aim, routed.resp3, routed.shared_slot, routed.client);
        let read_only = routed.read_only;
        let server = server.or_else(|| self.cluster_target(now, aim, client.index()));
        let backend = server.and_then(|s| self.pool.shared(s, shared_slot, resp3, &mut self.out));
        let Some(cluster) = self.cluster.as_deref_mut() else { return };
        if let (false, Some(server), Some(_)) = (read_only, server, backend) {
            cluster.writes.wrote(client, server);
        }
        let Some(routed) = cluster.requests.get_mut(ticket) else { return };
        let Some(backend) = backend else {
            let tries = routed.retries;
            routed.retries = routed.retries.saturating_add(1);
            cluster.want_refresh();
            let ask = if asking { server } else { None };
            self.resend_later(now + retry_delay(tries), Resend { ticket, ask });
            return;
        };
        if !asking && routed.queued == 0 {
            // The common case, one request and its reply, without building a list of waiters (that cost about
            // 70 instructions per request: callgrind, `CLUSTER=1 bench/instructions.sh`).
            let data = routed.request.clone();
            self.pool.send(backend, &[Waiter::Routed { ticket, sent: now }], data, &mut self.out);
            return;
        }
        let mut waiters: SmallVec<[Waiter; 4]> = SmallVec::new();
        let mut data = bytes::BytesMut::new();
        if asking {
            waiters.push(Waiter::Ignore);
            data.extend_from_slice(b"*1\r\n$6\r\nASKING\r\n");
        }
        if routed.queued > 0 {
            // A transaction: MULTI's +OK, then each queued request's +QUEUED (or the redirection it met).
            waiters.push(Waiter::Ignore);
            waiters.extend(std::iter::repeat_n(Waiter::Queued { ticket }, routed.queued));
            routed.queued_redirect = None;
        }
        waiters.push(Waiter::Routed { ticket, sent: now });
        let data = if data.is_empty() {
            routed.request.clone()
        } else {
            data.extend_from_slice(&routed.request);
            data.freeze()
        };
        self.pool.send(backend, &waiters, data, &mut self.out);
    }

    /// Sends the request of `resend` again at `at`. Its client's replies that are in go out now, rather than wait
    /// for the rest of their read (see [`crate::reply_order::ReadBatches`]): this one may wait long.
    fn resend_later(&mut self, at: Instant, resend: Resend) {
        let Some(cluster) = self.cluster.as_deref_mut() else { return };
        let client = cluster.requests.get_mut(resend.ticket).map(|r| r.client);
        cluster.requests.resend_at(at, resend);
        if let Some(client) = client {
            if self.clients.release_ready(client, &mut self.out) {
                self.clients.update_reading(client, &mut self.out);
            }
        }
    }

    /// Sends again the requests whose resend is due; those that have waited past `hold_ms` get an error.
    #[inline(never)]
    pub(super) fn resend_due(&mut self, now: Instant) {
        let Some(cluster) = self.cluster.as_deref_mut() else { return };
        let due = cluster.requests.due(now);
        let mut clients: Vec<ConnId> = Vec::new();
        for resend in due {
            let Some(cluster) = self.cluster.as_deref_mut() else { return };
            let Some(routed) = cluster.requests.get_mut(resend.ticket) else { continue };
            if !clients.contains(&routed.client) {
                clients.push(routed.client);
            }
            if now.saturating_duration_since(routed.since) >= self.config.hold {
                let ms = self.config.hold.as_millis();
                let error = format!(
                    "CLUSTERDOWN redis-proxy could not send the request within {ms} ms: no reachable primary \
                     serves its slot"
                );
                self.routed_answered(now, resend.ticket, resp::error_reply(&error));
                continue;
            }
            cluster.counts.retries += 1;
            self.send_routed(now, resend.ticket, resend.ask, resend.ask.is_some());
        }
        // The requests their clients sent later, held behind these, follow them now (unless one waits again).
        for client in clients {
            if self.cluster.as_deref().is_some_and(|c| !c.requests.resend_waiting_for(client)) {
                self.run_held(now, client);
                self.clients.update_reading(client, &mut self.out);
            }
        }
    }

    /// A reply to a routed request: a redirection is followed; anything else goes to the client. Out of line, as
    /// every cluster step is: the standalone reply path stays small enough to be inlined whole
    /// (`bench/instructions.sh`).
    #[inline(never)]
    pub(super) fn routed_reply(&mut self, now: Instant, ticket: u32, frame: Bytes) {
        let routed = self.cluster.as_deref_mut().and_then(|c| c.requests.get_mut(ticket));
        let (queued_redirect, watched) = routed.map_or((None, None), |r| (r.queued_redirect.take(), r.watched));
        if let Some(watched) = watched {
            return self.watched_reply(now, ticket, watched, queued_redirect.or_else(|| redirect_of(&frame)), frame);
        }
        if let Some(redirect) = queued_redirect.or_else(|| redirect_of(&frame)) {
            if let Some(error) = self.follow_redirect(now, ticket, redirect, &frame) {
                self.routed_answered(now, ticket, error);
            }
            return;
        }
        self.routed_answered(now, ticket, frame);
    }

    /// Follows a redirection of the request of `ticket`. Returns the error its client gets instead when the
    /// request has been redirected too often.
    fn follow_redirect(&mut self, now: Instant, ticket: u32, redirect: Redirect, frame: &[u8]) -> Option<Bytes> {
        let cluster = self.cluster.as_deref_mut()?;
        let routed = cluster.requests.get_mut(ticket)?;
        // `MOVED` and `ASK` are bounded by count; `TRYAGAIN` and `CLUSTERDOWN` by time (`hold_ms`, as a request
        // for a shard without a primary is held), since a failover or a migration may take a while.
        // An ASK met inside a transaction is waited out, not followed (see below).
        let moves = matches!(redirect, Redirect::Moved { .. })
            || matches!(redirect, Redirect::Ask { .. }) && routed.queued == 0;
        if moves && routed.redirects >= MAX_REDIRECTS {
            let said = String::from_utf8_lossy(&frame[1..frame.len().saturating_sub(2)]).into_owned();
            return Some(resp::error_reply(&format!(
                "ERR redis-proxy: the cluster redirected the request {MAX_REDIRECTS} times (last: {said}); its slot \
                 map does not settle"
            )));
        }
        let tries = routed.retries;
        if moves {
            routed.redirects += 1;
        } else {
            routed.retries = routed.retries.saturating_add(1);
        }
        match redirect {
            Redirect::Moved { slot, address } => {
                let Some(server) = self.node_at(now, &address) else { return self.node_unknown(now, ticket, &address) };
                if let Some(cluster) = self.cluster.as_deref_mut() {
                    cluster.moved(slot, server);
                }
                self.send_routed(now, ticket, Some(server), false);
            }
            // ASKING covers the next command only, and inside MULTI every command but EXEC is queued: a
            // transaction meeting a migration waits for it to end.
            Redirect::Ask { .. } if routed.queued > 0 => {
                self.resend_later(now + retry_delay(tries), Resend { ticket, ask: None });
            }
            Redirect::Ask { address, .. } => {
                let Some(server) = self.node_at(now, &address) else { return self.node_unknown(now, ticket, &address) };
                if let Some(cluster) = self.cluster.as_deref_mut() {
                    cluster.counts.ask += 1;
                }
                self.send_routed(now, ticket, Some(server), true);
            }
            Redirect::TryAgain if self.split_per_key(now, ticket) => {}
            Redirect::TryAgain | Redirect::ClusterDown => {
                let cluster = self.cluster.as_deref_mut()?;
                if redirect == Redirect::ClusterDown {
                    cluster.want_refresh();
                }
                self.resend_later(now + retry_delay(tries), Resend { ticket, ask: None });
            }
        }
        None
    }

    /// The node at `address`, to which a redirection points: a server already, or learnt now. A worker engine
    /// learns no node itself (its decider numbers the servers): None then, and it asks for a fresh map, which
    /// will name the node.
    pub(super) fn node_at(&mut self, now: Instant, address: &ServerAddress) -> Option<ServerId> {
        if let Some(server) = self.monitor.find(address) {
            return Some(server);
        }
        if self.is_worker() {
            self.cluster.as_deref_mut()?.want_refresh();
            return None;
        }
        self.add_server(now, address.clone()).ok().and_then(|()| self.monitor.find(address))
    }

    /// A redirection of the request of `ticket` pointed to a node that has no server: on a worker engine, the
    /// request waits for its decider's next map (bounded by `hold_ms`, as a request meeting `CLUSTERDOWN`; the
    /// redirection is not counted against it); elsewhere the node could not be added, and the client gets the
    /// error returned.
    fn node_unknown(&mut self, now: Instant, ticket: u32, address: &ServerAddress) -> Option<Bytes> {
        if !self.is_worker() {
            return Some(unreachable_node(address));
        }
        let routed = self.cluster.as_deref_mut()?.requests.get_mut(ticket)?;
        routed.redirects = routed.redirects.saturating_sub(1);
        let tries = routed.retries;
        routed.retries = routed.retries.saturating_add(1);
        self.resend_later(now + retry_delay(tries), Resend { ticket, ask: None });
        None
    }

    /// Splits the request of `ticket`, which met `TRYAGAIN`, into one request per key when it is a command a
    /// cluster client splits and names several keys: its slot is being migrated, some of its keys are on each
    /// side, and the server would answer `TRYAGAIN` until the migration ends. Each key then finds its node
    /// (through `ASK` for one that moved). Returns whether it did.
    fn split_per_key(&mut self, now: Instant, ticket: u32) -> bool {
        let Some(cluster) = self.cluster.as_deref_mut() else { return false };
        let Some(routed) = cluster.requests.get_mut(ticket) else { return false };
        let Some(args) = key_slots::multibulk_args(&routed.request) else { return false };
        let request = crate::resp::Request::from_args(&args);
        let Some(merge) = request.arg(0).and_then(crate::command::lookup).and_then(key_slots::split_merge) else {
            return false;
        };
        let parts = key_slots::split_per_key(&request, merge);
        if parts.len() < 2 {
            return false;
        }
        let Some(whole) = cluster.requests.take(ticket) else { return false };
        let answer = match whole.part {
            None => Answer::Client { conn: whole.client, seq: whole.seq },
            Some((fanout, index)) => Answer::Part { fanout, index },
        };
        let positions = parts.iter().map(|p| p.positions.clone()).collect();
        let fanout = cluster.requests.add_fanout(Fanout::new(answer, merge, positions));
        let tickets: Vec<u32> = parts
            .into_iter()
            .enumerate()
            .map(|(index, part)| {
                let routed = Routed {
                    request: part.request,
                    aim: Aim::Slot(part.slot),
                    part: Some((fanout, index)),
                    ..whole.clone()
                };
                cluster.requests.add(routed)
            })
            .collect();
        for ticket in tickets {
            self.send_routed(now, ticket, None, false);
        }
        true
    }

    /// The request of `ticket` is answered with `reply` (or a part of it is): the client gets it in its turn.
    pub(super) fn routed_answered(&mut self, now: Instant, ticket: u32, reply: Bytes) {
        let Some(cluster) = self.cluster.as_deref_mut() else { return };
        let Some(to) = cluster.requests.answered(ticket) else { return };
        let answer = match to.part {
            None if to.scan.is_some() => Some((to.client, to.seq, scan_reply(cluster, to.scan, reply))),
            None => Some((to.client, to.seq, reply)),
            Some((fanout, index)) => cluster.requests.part_answered(fanout, index, reply),
        };
        if let Some((client, seq, reply)) = answer {
            self.deliver(now, client, seq, reply);
        }
    }

    /// The connection a routed request was on is gone: one that never opened is sent again (the request never
    /// left), and so is a read; a write gets `error` (it may or may not have run).
    #[inline(never)]
    pub(super) fn routed_lost(&mut self, now: Instant, ticket: u32, connected: bool, error: &Bytes) {
        let Some(cluster) = self.cluster.as_deref_mut() else { return };
        let Some(routed) = cluster.requests.get_mut(ticket) else { return };
        // A watched request lived on the client's private connection, which is gone with its WATCH.
        if (connected && !routed.read_only) || routed.watched.is_some() {
            return self.routed_answered(now, ticket, error.clone());
        }
        let tries = routed.retries;
        routed.retries = routed.retries.saturating_add(1);
        cluster.want_refresh();
        self.resend_later(now + retry_delay(tries), Resend { ticket, ask: None });
    }
}
