//! The request path: a client's bytes split into requests, each run now (local answer, routed to a server and
//! sent on a backend connection, uploaded piece by piece) or held, and `WAIT` started.

use super::*;

/// What a request routed with reads split must leave behind once it is sent.
pub(super) struct SplitFacts {
    /// Its `SCAN`-family call, whose reply's cursor is remembered.
    scan: Option<ScanCall>,
    /// It may write: the client's reads stay on the master until it has replicated.
    fences: bool,
}

impl Engine {
    // Inlined by hand, with `deliver`: the request and reply paths are the hot path, and the call overhead of the
    // split into machines cost about 20 instructions per round trip (bench/instructions.sh).
    #[inline(always)]
    pub(super) fn client_data(&mut self, now: Instant, conn: ConnId, buf: &mut BytesMut) {
        if !self.uploads.is_empty() && self.upload_data(now, conn, buf) {
            return;
        }
        if self.cluster.is_some() {
            self.clients.begin_read(conn);
        }
        loop {
            while let NextRequest::Request { mut held, behind_held } =
                self.clients.next_request(now, conn, buf, &mut self.out)
            {
                if held.spec.is_none() && self.proxy_command(now, conn, &held) {
                    continue;
                }
                if behind_held || !self.execute(now, conn, &mut held) {
                    self.clients.hold(conn, held, self.failover.master().is_some(), &mut self.out);
                }
            }
            // What is left is the start of a request: one with a large value still arriving goes on as it comes.
            if buf.is_empty() || !self.start_upload(now, conn, buf) || self.upload_data(now, conn, buf) {
                break;
            }
        }
        self.clients.update_reading(conn, &mut self.out);
    }

    /// Starts uploading the request whose start `buf` holds, if it may be (see [`crate::upload`]): its head goes
    /// on a private connection of the client's now, as [`Engine::execute`] sends any request. Returns whether it
    /// did (the client moves large values from then on); otherwise the request is held whole, as every other one.
    #[cold]
    #[inline(never)]
    pub(super) fn start_upload(&mut self, now: Instant, conn: ConnId, buf: &mut BytesMut) -> bool {
        if self.cluster.is_some() {
            // A cluster request is kept whole until answered (a redirection sends it again): never uploaded.
            return false;
        }
        let Some(mut head) = self.clients.upload_head(now, conn, buf) else { return false };
        // Its read buffer may never hold 64 KiB at once: the value leaves it as it comes.
        self.clients.moves_large_values(conn);
        if !self.execute(now, conn, &mut head.held) {
            return false;
        }
        // The head asked for a private connection, so the client holds one now.
        let Some(backend) = self.clients.forward_state(conn).and_then(|state| state.private) else { return false };
        self.clients.upload_started(conn, buf, head.head_len);
        self.uploads.start(conn, backend, head.body_len);
        true
    }

    /// Forwards what arrived of the value `conn` is uploading. Returns whether the upload goes on (the caller
    /// leaves `buf` alone); false when the client uploads nothing or the request just ended (what follows in
    /// `buf` is the next request).
    #[cold]
    #[inline(never)]
    pub(super) fn upload_data(&mut self, now: Instant, conn: ConnId, buf: &mut BytesMut) -> bool {
        let Some(piece) = self.uploads.take(conn, buf) else { return false };
        match piece {
            UploadPiece::Part { backend, data } => self.pool.send(backend, &[], data, &mut self.out),
            UploadPiece::Waiting => {}
            UploadPiece::Last { backend, data, was_blocked } => {
                self.pool.send(backend, &[], data, &mut self.out);
                if was_blocked {
                    self.clients.set_upload_blocked(conn, false, &mut self.out);
                }
                return false;
            }
            UploadPiece::BadTerminator { backend } => {
                buf.clear();
                self.upload_malformed(now, conn, backend);
            }
        }
        true
    }

    /// The value `client` uploaded on `backend` is not followed by CRLF. The server never got the request's last
    /// bytes, so it never ran it: closing the connection drops it there. The client gets Redis's protocol error
    /// in the request's slot and is closed.
    #[cold]
    #[inline(never)]
    pub(super) fn upload_malformed(&mut self, now: Instant, client: ConnId, backend: ConnId) {
        self.uploads.remove_backend(backend);
        self.clients.private_lost(client, backend);
        let Some(lost) = self.pool.remove(backend) else { return };
        self.out.close(backend);
        let message = format!("ERR {}", resp::ProtocolError::MissingBulkTerminator);
        self.out.event(Event::ClientProtocolError { conn: client, message: message.clone() });
        let earlier = resp::error_reply(
            "ERR redis-proxy closed the connection after a protocol error; the command may or may not have run",
        );
        let slots: Vec<(ConnId, u64)> = lost
            .waiters
            .iter()
            .filter_map(|waiter| match *waiter {
                Waiter::Client { conn, seq, .. } => Some((conn, seq)),
                _ => None,
            })
            .collect();
        for (index, &(conn, seq)) in slots.iter().enumerate() {
            let reply = if index + 1 == slots.len() { resp::error_reply(&message) } else { earlier.clone() };
            self.deliver(now, conn, seq, reply);
        }
        self.clients.close_if_done(client, &mut self.out);
    }

    /// Runs a classified request now (true), or leaves it to the caller to hold (false) when it must wait: no
    /// master, or an order barrier.
    /// A `SCAN`-family call whose cursor's server is gone is rewritten in `held` to start its iteration again.
    pub(super) fn execute(&mut self, now: Instant, conn: ConnId, held: &mut HeldRequest) -> bool {
        if self.cluster.is_some() {
            return self.execute_in_cluster(now, conn, held);
        }
        let pin = match &held.handling {
            Handling::Forward(pin) => *pin,
            _ => return self.execute_locally(now, conn, held),
        };
        // A client that is gone needs nothing more.
        let Some(state) = self.clients.forward_state(conn) else { return true };
        let wants_private = pin > Pin::Shared || state.private.is_some();
        let master = self.failover.master();
        // The SCAN family is flagged `readonly` and nothing else: in `allToMaster` only such a request takes the
        // longer route, where a cursor an earlier master returned starts its iteration again.
        let may_scan = held.spec.is_some_and(|s| s.flags == CommandFlags::READONLY);
        let (server, split, to_master) = if self.router.splits_reads() || may_scan {
            match self.route_split(now, conn, held, wants_private, master) {
                Ok((server, split)) => (server, split, Some(server) == master),
                Err(ran) => return ran,
            }
        } else {
            let Some(server) = self.router.route_to_master(self.monitor.views(), master) else { return false };
            (server, None, true)
        };
        let backend = match (wants_private, state.private) {
            (true, Some(existing)) => existing,
            // Order barrier: the private connection must not overtake requests still in flight elsewhere.
            (true, None) if state.in_flight > 0 => return false,
            (true, None) => match self.open_private(conn, server, held.resp3 && pin != Pin::Replication) {
                Some(backend) => backend,
                None => return false,
            },
            (false, _) => match self.pool.shared(server, state.shared_slot, held.resp3, &mut self.out) {
                Some(backend) => backend,
                None => return false,
            },
        };
        let read_only = held.spec.is_some_and(|s| s.flags.contains(CommandFlags::READONLY));
        let write_epoch = (to_master && !read_only).then_some(self.waits.epoch());
        let Ok(waiter) = self.clients.start_request(now, conn, backend, pin, write_epoch) else { return false };
        if let (Some(split), Some(Waiter::Client { seq, .. })) = (split, waiter) {
            self.split_sent(conn, seq, split, server);
        }
        if pin == Pin::Replication {
            self.pool.set_raw(backend);
        }
        let target = if to_master { Target::Master } else { Target::Replica };
        self.out.counters.request(target, Class::of(held.spec));
        self.pool.send(backend, waiter.as_slice(), held.request.frame().clone(), &mut self.out);
        true
    }

    /// A private connection to `server` for `conn`, now its own (`resp3`: switched with `HELLO 3`; a replication
    /// stream is passed on raw, from its first byte, so no `HELLO` reply may precede it). Out of line: pinning is
    /// rare next to forwarding.
    #[inline(never)]
    fn open_private(&mut self, conn: ConnId, server: ServerId, resp3: bool) -> Option<ConnId> {
        let backend = self.pool.acquire_private(server, conn, resp3, &mut self.out)?;
        self.clients.set_private(conn, backend);
        Some(backend)
    }

    /// Runs a request that is not forwarded as it is: answered here (`PING`, refusals, `EXECABORT`), a `WAIT`, or
    /// one that needs a connection of its own. Returns as [`Engine::execute`] does. Out of line, so that the
    /// forwarding path stays short.
    #[inline(never)]
    pub(super) fn execute_locally(&mut self, now: Instant, conn: ConnId, held: &HeldRequest) -> bool {
        match &held.handling {
            Handling::Local(reply) => {
                self.out.counters.request(Target::Proxy, Class::of(held.spec));
                self.clients.reply_local(conn, reply.clone(), &mut self.out);
                true
            }
            Handling::LocalThenClose(reply) => {
                self.out.counters.request(Target::Proxy, Class::of(held.spec));
                self.clients.reply_local(conn, reply.clone(), &mut self.out);
                self.clients.close_after_replies(conn, &mut self.out);
                true
            }
            Handling::Refuse(message) => {
                self.out.counters.request(Target::Proxy, Class::of(held.spec));
                self.clients.reply_local(conn, resp::error_reply(message), &mut self.out);
                true
            }
            Handling::AbortExec => {
                // The server still queues the transaction: drop it there, and fail EXEC as Redis would.
                if let Some(private) = self.clients.forward_state(conn).and_then(|state| state.private) {
                    self.pool.send(private, &[Waiter::Ignore], discard_request(), &mut self.out);
                }
                let abort = "EXECABORT Transaction discarded because of previous errors.";
                self.clients.reply_local(conn, resp::error_reply(abort), &mut self.out);
                true
            }
            Handling::OutOfBand => {
                // Its own connection to the master, so that it never waits behind the script it must stop.
                let Some(master) = self.failover.master() else { return false };
                if !self.monitor.views().contains(master) {
                    return false;
                }
                let Some(seq) = self.clients.reserve_slot(conn) else { return true };
                let Some(backend) = self.pool.open(master, Purpose::OutOfBand { owner: conn }, &mut self.out) else {
                    return true;
                };
                self.out.counters.request(Target::Master, Class::Other);
                let waiter = Waiter::Client { conn, seq, sent: now };
                self.pool.send(backend, &[waiter], held.request.frame().clone(), &mut self.out);
                true
            }
            Handling::Wait { replicas, timeout } => self.start_wait(now, conn, *replicas, *timeout),
            Handling::Forward(_) => false,
        }
    }

    /// Routes a request where reads are split (`readsToSlaves`): the client's `SCAN` cursors and, with
    /// `read_your_writes`, its writes bend the choice. Returns the server and what must be remembered once the
    /// request is sent, or what [`Engine::execute`] returns when it is not sent (held: false; answered here with
    /// an error: true). Out of line, so that the `allToMaster` path stays short.
    #[inline(never)]
    pub(super) fn route_split(
        &mut self,
        now: Instant,
        conn: ConnId,
        held: &mut HeldRequest,
        private: bool,
        master: Option<ServerId>,
    ) -> Result<(ServerId, Option<SplitFacts>), bool> {
        let replica_read = self.router.replica_read(held.spec, private);
        let floor = if replica_read && self.router.read_your_writes() {
            let master_offset = master.and_then(|m| {
                let view = self.monitor.views().get(m)?;
                // Read from a server that still said it was the master (as `WAIT` requires).
                let reading = view.offset_seen.as_ref().filter(|(_, info)| info.role == Some(Role::Master));
                reading.map(|(_, info)| (view.offset_serial, info.repl_offset))
            });
            self.clients.read_floor(conn, master_offset)
        } else {
            ReadFloor::Any
        };
        let scan = cursor::scan_call(&held.request);
        let issuer = match &scan {
            Some(call) => self.clients.cursor_issuer(conn, call),
            None => Issuer::Anyone,
        };
        let demand = Demand { replica_read, issuer, floor };
        let server = match self.router.route(now, demand, self.monitor.views(), master) {
            Route::Server(server) => server,
            Route::Restart(server) => {
                if let Some(call) = &scan {
                    held.request = call.restarted(&held.request);
                }
                server
            }
            Route::Wait => return Err(false),
            Route::Refuse(refusal) => {
                self.clients.reply_local(conn, resp::error_reply(refusal.message()), &mut self.out);
                return Err(true);
            }
        };
        let fences = !replica_read && self.router.fences(held.spec, private);
        Ok((server, Some(SplitFacts { scan, fences })))
    }

    /// A request routed with reads split went to `server` with reply slot `seq`: its cursor and its write are
    /// remembered for the client.
    #[inline(never)]
    pub(super) fn split_sent(&mut self, conn: ConnId, seq: u64, split: SplitFacts, server: ServerId) {
        if let Some(call) = &split.scan {
            let incarnation = self.monitor.views().get(server).map_or(0, |v| v.incarnation);
            self.clients.scan_sent(conn, seq, call, Process { server, incarnation });
        }
        if split.fences {
            self.clients.write_sent(conn, seq);
        }
    }

    /// Asks every server for its replication offset (for `WAIT` and read fences).
    pub(super) fn request_offsets(&mut self, now: Instant) {
        for server in self.monitor.views().ids() {
            self.monitor.request_offset(now, server);
        }
        self.execute_orders();
        self.clients.set_next_offset_serial(self.monitor.next_offset_serial());
    }

    /// Starts a `WAIT` once every earlier request of the client is answered (false: hold it until then).
    pub(super) fn start_wait(&mut self, now: Instant, conn: ConnId, replicas: u64, timeout: Option<Duration>) -> bool {
        let Some(state) = self.clients.forward_state(conn) else { return true };
        if state.in_flight > 0 || self.failover.master().is_none() {
            return false;
        }
        let Some(seq) = self.clients.reserve_slot(conn) else { return true };
        self.out.counters.request(Target::Proxy, Class::Other);
        // Writes acknowledged by an earlier master may have been lost with it: no replica can vouch for them.
        let epoch = self.waits.epoch();
        let void = self.clients.take_unconfirmed_writes(conn).is_some_and(|written| written < epoch);
        self.waits.add(now, conn, seq, replicas, timeout, void, epoch);
        self.request_offsets(now);
        true
    }

    /// Answers the `WAIT`s that are done.
    pub(super) fn settle_waits(&mut self, now: Instant) {
        let (clients, cluster) = (&self.clients, self.cluster.as_deref());
        let (views, master, epoch) = (self.monitor.views(), self.failover.master(), self.waits.epoch());
        let leads = |server| cluster.is_some_and(|c| c.is_primary(server));
        let done = self.waits.settle(now, views, (master, epoch), leads, |c| clients.contains(c));
        for wait in done {
            self.deliver(now, wait.client, wait.seq, wait.reply);
        }
    }

    /// Out of line: it only happens with `read_your_writes`.
    #[inline(never)]
    pub(super) fn fence_write_answered(&mut self, now: Instant) {
        self.fence_poll.demand(now, self.monitor.next_offset_serial());
        if self.fence_poll.poll_due(now, self.monitor.views(), self.failover.master()) {
            self.request_offsets(now);
        }
    }

    /// A backend connection blocked on writing (or drained): the client uploading on it stops (or resumes) being
    /// read, so the proxy never holds more of a value than the server's socket refuses.
    pub(super) fn upload_backpressure(&mut self, backend: ConnId, blocked: bool) {
        if let Some(client) = self.uploads.backend_blocked(backend, blocked) {
            self.clients.set_upload_blocked(client, blocked, &mut self.out);
        }
    }

    /// A client blocked on writing (or drained): the backend connection streaming a reply to it, if any, stops
    /// (or resumes) being read, so the proxy never holds more of a value than the client's socket refuses.
    pub(super) fn stream_backpressure(&mut self, now: Instant, client: ConnId, blocked: bool) {
        // A client that left has no say: the rest of its value is read and dropped.
        if !self.clients.contains(client) {
            return;
        }
        if let Some(backend) = self.streams.client_blocked(now, client, blocked) {
            self.out.actions.push_back(Action::SetReadable { conn: backend, readable: !blocked });
        }
    }
}

/// `DISCARD`, as a request frame.
fn discard_request() -> bytes::Bytes {
    bytes::Bytes::from_static(b"*1\r\n$7\r\nDISCARD\r\n")
}
