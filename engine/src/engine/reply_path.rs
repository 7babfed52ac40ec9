//! The reply path: a backend's bytes split into replies, each matched to what awaits it (a client's slot, a
//! probe, a sentinel's question), large ones streamed; a backend connection lost fails what was in flight.

use super::*;

/// How a backend connection was lost: the evidence it is, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Loss {
    /// The connect was refused: nothing listens there.
    Refused,
    /// The connect failed otherwise (timed out, host unreachable).
    ConnectFailed,
    /// The server (or the network) closed it.
    Closed,
    /// The engine closed it (the server is down or lost as master, a bad reply): no evidence.
    GaveUp,
}

impl Engine {
    pub(super) fn backend_data(&mut self, now: Instant, conn: ConnId, buf: &mut BytesMut) {
        if !self.streams.is_empty() && self.stream_through(now, conn, buf) {
            return;
        }
        loop {
            let (frame, owner) = match self.pool.next_reply(conn, buf) {
                Ok(Some(reply)) => reply,
                Ok(None) => {
                    // Only a partial reply can be a large one to stream; the common case has nothing left.
                    if !buf.is_empty() {
                        self.partial_reply(now, conn, buf);
                    }
                    return;
                }
                Err(error) => {
                    buf.clear();
                    self.close_and_fail(now, conn, &format!("bad reply: {error}"));
                    return;
                }
            };
            if let Some(owner) = owner {
                match self.pool.take_proxy_waiter(conn) {
                    Some(Waiter::Auth) => {
                        self.backend_auth_reply(now, conn, &frame);
                        continue;
                    }
                    Some(_) => continue,
                    None => {}
                }
                if self.cluster.as_deref().is_some_and(|c| c.shard_subscriptions.is_line(conn)) {
                    self.shard_line_frame(now, conn, owner, frame);
                    continue;
                }
                if frame.first() == Some(&b'>') || self.clients.is_passthrough(owner) {
                    self.clients.push(owner, frame, &mut self.out);
                    continue;
                }
            } else if frame.first() == Some(&b'>') {
                // A push on a shared RESP3 connection answers no request (none of its clients subscribed to
                // anything, as that pins): matching it to one would put the connection out of step. On a
                // sentinel's subscription it is an event.
                self.sentinel_push(now, conn, &frame);
                continue;
            }
            match self.pool.pop_waiter(conn, &mut self.out) {
                Some(Waiter::Client { conn: client, seq, sent }) => {
                    // One request in LATENCY_SAMPLE: reading the time difference costs more than the rest of
                    // the counting together, and a steady sample shows the same distribution.
                    if seq % LATENCY_SAMPLE == 0 {
                        self.out.counters.latency.observe(now.saturating_duration_since(sent));
                    }
                    if frame.len() >= LARGE_VALUE {
                        self.clients.moves_large_values(client);
                    }
                    self.deliver(now, client, seq, frame)
                }
                Some(Waiter::Routed { ticket, sent }) => {
                    if ticket % LATENCY_SAMPLE as u32 == 0 {
                        self.out.counters.latency.observe(now.saturating_duration_since(sent));
                    }
                    self.routed_reply(now, ticket, frame);
                }
                Some(Waiter::Queued { ticket }) => self.queued_reply(ticket, &frame),
                Some(Waiter::ClusterMap(query)) => self.cluster_map_reply(now, conn, query, &frame),
                Some(Waiter::ClusterFailover) => self.cluster_failover_reply(now, &frame),
                Some(Waiter::Reset) => self.pool.reset_done(conn, &frame, self.failover.master(), &mut self.out),
                Some(Waiter::Ignore) => {}
                Some(Waiter::Auth) => self.backend_auth_reply(now, conn, &frame),
                Some(Waiter::Sentinel(query)) => self.sentinel_reply(now, conn, query, &frame),
                Some(Waiter::Probe(probe)) => {
                    let Some(server) = self.pool.server_of(conn) else { continue };
                    match self.monitor.probe_reply(now, server, probe, &frame, &mut self.out) {
                        ProbeOutcome::Nothing => {}
                        ProbeOutcome::Recovered | ProbeOutcome::Facts => {
                            self.evaluate_failover(now);
                            self.run_all_held(now);
                            self.settle_waits(now);
                        }
                        ProbeOutcome::Offset => {
                            self.settle_waits(now);
                            // While fences wait, the next poll goes out as soon as one is due.
                            if self.fence_poll.poll_due(now, self.monitor.views(), self.failover.master()) {
                                self.request_offsets(now);
                            }
                            self.advance_switchover(now);
                        }
                    }
                }
                None => {
                    // A reply nobody asked for: the connection is out of step and cannot be trusted.
                    self.close_and_fail(now, conn, "unexpected reply");
                    buf.clear();
                    return;
                }
            }
        }
    }

    /// The reply to the `AUTH` a backend connection started with: the monitor learns whether the server takes the
    /// proxy's credentials; one that takes them again may be what held requests and the failover rules wait for.
    #[cold]
    #[inline(never)]
    pub(super) fn backend_auth_reply(&mut self, now: Instant, conn: ConnId, frame: &[u8]) {
        let Some(server) = self.pool.server_of(conn) else { return };
        if self.monitor.auth_reply(server, frame, &mut self.out) {
            self.evaluate_failover(now);
            self.run_all_held(now);
        }
    }

    /// The `CONFIG SET masterauth` a server needs before it is pointed at `master` (None: no credentials).
    pub(super) fn masterauth_for(&self, master: ServerId) -> Option<bytes::Bytes> {
        let address = self.monitor.address(master)?;
        self.config.server_credentials(address).and_then(auth::masterauth_request)
    }

    /// Starts streaming the large reply whose start `buf` holds on `conn` if its client is owed it next (then the
    /// header and the body so far go out now); otherwise it is held whole, as every other reply.
    #[cold]
    #[inline(never)]
    pub(super) fn partial_reply(&mut self, now: Instant, conn: ConnId, buf: &mut BytesMut) {
        let Some((whole, waiter)) = self.pool.partial_large_bulk(conn, buf) else { return };
        if let Some(Waiter::Client { conn: client, .. }) = waiter {
            self.clients.moves_large_values(client);
        }
        let client = match waiter {
            Some(Waiter::Client { conn: client, seq, .. }) if self.clients.is_next(client, seq) => (client, seq),
            _ => return self.pool.hold_whole(conn, buf),
        };
        self.pool.stream_taken(conn);
        let data = buf.split().freeze();
        self.streams.start(conn, client.0, client.1, whole - data.len());
        self.stream_part(now, client.0, client.1, data);
    }

    /// Sends a piece of a streamed reply; a client already blocked on writing pauses the stream at once.
    pub(super) fn stream_part(&mut self, now: Instant, client: ConnId, seq: u64, data: bytes::Bytes) {
        self.clients.stream_part(client, seq, data, &mut self.out);
        if self.clients.is_write_blocked(client) {
            self.stream_backpressure(now, client, true);
        }
    }

    /// Hands what arrived on `conn` to the reply streamed on it, if one is. Returns true when the stream took
    /// everything (or the connection was given up); false when there is none, or it ended and the replies after
    /// it are left in `buf` for the scanner.
    #[cold]
    #[inline(never)]
    pub(super) fn stream_through(&mut self, now: Instant, conn: ConnId, buf: &mut BytesMut) -> bool {
        match self.streams.take(conn, buf) {
            None => false,
            Some(Piece::Part { client, seq, data }) => {
                self.stream_part(now, client, seq, data);
                true
            }
            Some(Piece::Last { data, was_paused }) => {
                if was_paused {
                    self.out.actions.push_back(Action::SetReadable { conn, readable: true });
                }
                match self.pool.pop_waiter(conn, &mut self.out) {
                    Some(Waiter::Client { conn: client, seq, sent }) => {
                        if seq % LATENCY_SAMPLE == 0 {
                            self.out.counters.latency.observe(now.saturating_duration_since(sent));
                        }
                        self.deliver(now, client, seq, data);
                        false
                    }
                    // A stream starts only for a client's waiter and keeps it at the front: not reached.
                    _ => {
                        buf.clear();
                        self.close_and_fail(now, conn, "unexpected reply");
                        true
                    }
                }
            }
            Some(Piece::BadTerminator) => {
                buf.clear();
                self.close_and_fail(now, conn, "bad reply: bulk string not terminated by CRLF");
                true
            }
        }
    }

    /// Closes the connections to `server` (the probe too unless `keep_probe`); in-flight requests get errors.
    pub(super) fn close_backends_of(&mut self, now: Instant, server: ServerId, keep_probe: bool, reason: &str) {
        for conn in self.pool.conns_of(server, keep_probe) {
            self.close_and_fail(now, conn, reason);
        }
    }

    /// Closes a backend connection the engine gives up on and fails its requests (see [`Engine::backend_lost`]).
    /// Failing requests can close other connections, so a connection already gone is skipped.
    pub(super) fn close_and_fail(&mut self, now: Instant, conn: ConnId, reason: &str) {
        if self.pool.contains(conn) {
            self.out.close(conn);
            self.backend_lost(now, conn, reason, Loss::GaveUp);
        }
    }

    /// A backend connection failed, was `refused`, broke or was closed by the engine: every request in flight on it
    /// gets an error (a write may or may not have run: never retried), a private connection's client is closed
    /// because the state it built is gone, and the monitor weighs the evidence.
    pub(super) fn backend_lost(&mut self, now: Instant, conn: ConnId, reason: &str, loss: Loss) {
        let refused = loss == Loss::Refused;
        let Some(lost) = self.pool.remove(conn) else { return };
        if let Some(client) = self.streams.remove(conn) {
            // The client has part of a reply whose rest will never come: no error can follow it in the protocol.
            self.clients.remove(client, true, &mut self.out);
        }
        if let Some(client) = self.uploads.remove_backend(conn) {
            // The client is closed below (it loses its private connection); what it still sends is dropped.
            self.clients.set_upload_blocked(client, false, &mut self.out);
        }
        let Some(lost_server) = lost.server else {
            if let Purpose::Sentinel { index, subscriber } = lost.purpose {
                self.sentinel_lost(now, index, subscriber);
            }
            return;
        };
        // The owner loses its private connection before any error is delivered: delivering runs the owner's held
        // requests, which must not be sent on (or wait forever for) this connection.
        let orphaned = match lost.purpose {
            Purpose::Private { owner: Some(_) } if self.shard_line_lost(conn) => None,
            Purpose::Private { owner: Some(owner) }
                if self.subscribe_elsewhere(owner, conn, lost_server, lost.connected) =>
            {
                None
            }
            Purpose::Private { owner: Some(owner) } if self.clients.private_lost(owner, conn) => Some(owner),
            _ => None,
        };
        let address = self
            .monitor
            .address(lost_server)
            .cloned()
            .unwrap_or_else(|| ServerAddress { host: "a removed server".to_string(), port: 0 });
        let message = if lost.connected {
            format!("ERR redis-proxy lost the connection to {address} ({reason}); the command may or may not have run")
        } else {
            format!("ERR redis-proxy could not reach {address} ({reason}); the command was not sent")
        };
        let error = resp::error_reply(&message);
        let mut failed = 0;
        for waiter in &lost.waiters {
            match *waiter {
                Waiter::Client { conn: client, seq, .. } => {
                    failed += 1;
                    self.deliver(now, client, seq, error.clone());
                }
                Waiter::Routed { ticket, .. } => {
                    failed += usize::from(lost.connected);
                    self.routed_lost(now, ticket, lost.connected, &error);
                }
                Waiter::ClusterMap(_) => {
                    if let Some(cluster) = self.cluster.as_deref_mut() {
                        cluster.refresh_lost(lost_server);
                    }
                }
                Waiter::ClusterFailover => self.cluster_failover_lost(now),
                _ => {}
            }
        }
        self.out.event(Event::BackendLost { address, reason: reason.to_string(), failed_requests: failed });
        let went_down = refused && self.monitor.refused(lost_server, &mut self.out);
        if went_down {
            self.close_backends_of(now, lost_server, false, "server is down");
        }
        if lost.purpose == Purpose::Knock {
            self.monitor.forget_knock(lost_server);
        }
        // A refusal was weighed above; one the engine closed itself (it gave up on the server's connections) is
        // no evidence either way.
        if loss == Loss::ConnectFailed && !lost.connected {
            self.monitor.connect_failed(lost_server);
        }
        match lost.purpose {
            Purpose::Knock => {}
            Purpose::Probe => {
                self.monitor.probe_lost(now, lost_server);
                self.execute_orders();
            }
            // A connection that never opened, or one lost with requests on it, may mean a dead server. An idle
            // connection closed by the server (its `timeout` setting) is just reopened when needed.
            _ if !lost.connected || failed > 0 => {
                self.monitor.data_conn_lost(now, lost_server);
                self.execute_orders();
            }
            _ => {}
        }
        if went_down || matches!(lost.purpose, Purpose::Probe | Purpose::Knock) {
            // A server gone or unreachable may be what a choice among several masters was waiting for.
            self.evaluate_failover(now);
        }
        if let Some(owner) = orphaned {
            self.clients.close_if_done(owner, &mut self.out);
        }
    }
}
