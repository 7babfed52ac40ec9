//! Cluster mode's sharded subscriptions through the engine: a client's `SSUBSCRIBE` sent on its line to the
//! primary of the channels' slot, `SUNSUBSCRIBE` answered here, the lines' frames read, and the channels of a
//! lost line or a moved slot subscribed again where the map says (see [`crate::cluster_shard_pubsub`]).

use super::*;
use crate::cluster::MAX_REDIRECTS;
use crate::cluster_shard_pubsub::{Batch, LineFrame};
use crate::key_slots::{self, KeySlots};
use crate::redirect::{redirect_of, Redirect};
use crate::routed::Aim;
use bytes::Bytes;

impl Engine {
    /// What sharded subscriptions make of a request of a client in pass-through: Some(true) done, Some(false)
    /// hold it, None when they leave it to the client's subscriber connection.
    pub(super) fn shard_pubsub_step(&mut self, now: Instant, conn: ConnId, held: &HeldRequest) -> Option<bool> {
        let name = held.spec?.name;
        let shards = &self.cluster.as_deref()?.shard_subscriptions;
        match name {
            "ssubscribe" => Some(self.shard_subscribe(now, conn, held)),
            "sunsubscribe" => Some(self.shard_unsubscribe(conn, held)),
            _ if !shards.subscribes(conn) => None,
            // Its replies must come after the confirmations it awaits.
            _ if shards.awaits_confirmation(conn, None) => Some(false),
            "reset" => {
                // RESET leaves every channel, shard channels too.
                self.close_lines_of(conn);
                None
            }
            // Without a subscriber connection, nothing would answer as a subscribed RESP2 connection does.
            "ping" if held.request.arg_count() <= 2 && !held.resp3 => {
                let private = self.clients.forward_state(conn)?.private;
                if private.is_some() {
                    return None;
                }
                let message = held.request.arg(1).unwrap_or_default();
                let mut reply = b"*2\r\n$4\r\npong\r\n".to_vec();
                reply.extend_from_slice(&resp::bulk_reply(message));
                self.out.counters.request(Target::Proxy, Class::of(held.spec));
                self.clients.reply_local(conn, Bytes::from(reply), &mut self.out);
                Some(true)
            }
            _ => None,
        }
    }

    /// `SSUBSCRIBE`: sent on the client's line to the primary of its channels' slot, opened if need be (false:
    /// hold it while no primary is usable, or an earlier reply is due elsewhere).
    fn shard_subscribe(&mut self, now: Instant, conn: ConnId, held: &HeldRequest) -> bool {
        let Some(state) = self.clients.forward_state(conn) else { return true };
        if state.in_flight > 0 {
            return false;
        }
        let Some(spec) = held.spec else { return true };
        let KeySlots::One(slot) = key_slots::key_slots(&held.request, spec) else {
            self.out.counters.request(Target::Proxy, Class::of(held.spec));
            let refusal = resp::error_reply("CROSSSLOT Keys in request don't hash to the same slot");
            self.clients.reply_local(conn, refusal, &mut self.out);
            return true;
        };
        let Some(server) = self.cluster_target(now, Aim::Slot(slot), conn.index()) else { return false };
        let Some(cluster) = self.cluster.as_deref() else { return true };
        let line = cluster.shard_subscriptions.line_to(conn, server);
        if cluster.shard_subscriptions.awaits_confirmation(conn, line) {
            return false;
        }
        let Some(line) = line.or_else(|| self.open_line(conn, server)) else { return false };
        if !self.clients.pass_through(conn, line) {
            return false;
        }
        self.out.counters.request(Target::Master, Class::of(held.spec));
        let channels = held.request.args().skip(1).map(Bytes::copy_from_slice).collect();
        self.send_batch(line, Batch::of_client(channels, now));
        true
    }

    /// `SUNSUBSCRIBE`: answered here at once (the proxy knows what the client follows), and sent on the lines
    /// that carry the channels (false: hold it until the confirmations the client awaits are in).
    fn shard_unsubscribe(&mut self, conn: ConnId, held: &HeldRequest) -> bool {
        let Some(state) = self.clients.forward_state(conn) else { return true };
        let Some(cluster) = self.cluster.as_deref_mut() else { return true };
        if state.in_flight > 0 || cluster.shard_subscriptions.awaits_confirmation(conn, None) {
            return false;
        }
        let channels: Vec<&[u8]> = held.request.args().skip(1).collect();
        let (reply, sends) = cluster.shard_subscriptions.unsubscribe(conn, &channels, held.resp3);
        for (line, data) in sends {
            self.pool.send(line, &[], data, &mut self.out);
        }
        self.out.counters.request(Target::Proxy, Class::of(held.spec));
        self.clients.reply_local(conn, reply, &mut self.out);
        true
    }

    /// A new line of `client` to `server` (None: the server is gone).
    fn open_line(&mut self, client: ConnId, server: ServerId) -> Option<ConnId> {
        let resp3 = self.clients.speaks_resp3(client);
        let line = self.pool.acquire_private(server, client, resp3, &mut self.out)?;
        self.cluster.as_deref_mut()?.shard_subscriptions.add_line(client, server, line);
        Some(line)
    }

    /// Sends `batch` on `line`: every frame the server sends back is read by [`Engine::shard_line_frame`].
    fn send_batch(&mut self, line: ConnId, batch: Batch) {
        let Some(cluster) = self.cluster.as_deref_mut() else { return };
        self.pool.send(line, &[], batch.request(), &mut self.out);
        cluster.shard_subscriptions.sent(line, batch);
    }

    /// A frame on the line `conn` of `owner`: a message passed on, a confirmation counted, a channel the node
    /// dropped or a refused `SSUBSCRIBE` sent again where the map says.
    #[cold]
    #[inline(never)]
    pub(super) fn shard_line_frame(&mut self, now: Instant, conn: ConnId, owner: ConnId, frame: Bytes) {
        let resp3 = self.clients.speaks_resp3(owner);
        let Some(cluster) = self.cluster.as_deref_mut() else { return };
        match cluster.shard_subscriptions.frame(conn, frame, resp3) {
            LineFrame::Nothing => {}
            LineFrame::ToClient { client, frame, confirmed } => {
                self.clients.push(client, frame, &mut self.out);
                if confirmed {
                    self.run_held(now, client);
                    self.clients.update_reading(client, &mut self.out);
                }
            }
            // Placed again once a map shows the slot's owner: the refresh is prompted now.
            LineFrame::Dropped => cluster.want_refresh(),
            LineFrame::Send(data) => self.pool.send(conn, &[], data, &mut self.out),
            LineFrame::Moved { client, server, channels } => {
                if let Some(to) = self.monitor.address(server).cloned() {
                    self.out.event(Event::ShardChannelsMoved { client, to, channels });
                }
            }
            LineFrame::Refused { client, batch, frame } => self.shard_batch_refused(now, client, batch, &frame),
        }
    }

    /// A node refused `batch` of `client` with `frame`. `MOVED` fixes the map (the node it names is learnt if need
    /// be) and sends the batch there; after [`MAX_REDIRECTS`] of them the map does not settle, and the batch is
    /// ended. `CLUSTERDOWN`, `TRYAGAIN` and `ASK` (the slot is changing hands) wait for the next map, without a
    /// count: the client's own `SSUBSCRIBE` waits no longer than `hold_ms`, the proxy's for as long as it takes.
    /// Another error ends the batch. Ending it gives the client's own `SSUBSCRIBE` an error, and gives the proxy's
    /// channels up, telling the client with `sunsubscribe` as Redis does when a channel's slot leaves the node.
    fn shard_batch_refused(&mut self, now: Instant, client: ConnId, mut batch: Batch, frame: &Bytes) {
        let redirect = redirect_of(frame);
        if let Some(Redirect::Moved { .. }) = redirect {
            batch.redirects = batch.redirects.saturating_add(1);
        }
        if redirect.is_none() || batch.redirects > MAX_REDIRECTS {
            let told = match (batch.for_client, redirect) {
                (true, None) => frame.clone(),
                (true, Some(_)) => resp::error_reply(&format!(
                    "ERR redis-proxy: the cluster redirected the SSUBSCRIBE {MAX_REDIRECTS} times (last: {}); its \
                     slot map does not settle",
                    String::from_utf8_lossy(&frame[1..frame.len().saturating_sub(2)])
                )),
                (false, _) => {
                    let resp3 = self.clients.speaks_resp3(client);
                    let Some(cluster) = self.cluster.as_deref_mut() else { return };
                    cluster.shard_subscriptions.give_up(client, &batch, resp3)
                }
            };
            self.clients.push(client, told, &mut self.out);
            if batch.for_client {
                self.run_held(now, client);
                self.clients.update_reading(client, &mut self.out);
            }
            return;
        }
        let mut fixed = false;
        if let Some(Redirect::Moved { slot, address }) = redirect {
            // A node the map held no longer names (failed, then back) may own the slot again: learnt here.
            let server = self.node_at(now, &address);
            if let (Some(server), Some(cluster)) = (server, self.cluster.as_deref_mut()) {
                cluster.moved(slot, server);
                fixed = true;
            }
        }
        let Some(cluster) = self.cluster.as_deref_mut() else { return };
        cluster.want_refresh();
        cluster.shard_subscriptions.unplace(client, batch);
        if fixed {
            self.place_shard_batches(now);
        }
    }

    /// Sends the batches waiting for a usable primary of their slot that has one now; the rest wait for the
    /// next map, which is asked for.
    pub(super) fn place_shard_batches(&mut self, now: Instant) {
        let Some(cluster) = self.cluster.as_deref_mut() else { return };
        if !cluster.shard_subscriptions.any_unplaced() {
            return;
        }
        for (client, batch) in cluster.shard_subscriptions.take_unplaced() {
            let server = self.cluster_target(now, Aim::Slot(batch.slot()), client.index());
            let Some(cluster) = self.cluster.as_deref_mut() else { return };
            let line = server.and_then(|s| cluster.shard_subscriptions.line_to(client, s));
            let Some(line) = server.and_then(|s| line.or_else(|| self.open_line(client, s))) else {
                if batch.since.is_some_and(|since| now.saturating_duration_since(since) >= self.config.hold) {
                    // The client's own SSUBSCRIBE waits no longer than a held request.
                    let ms = self.config.hold.as_millis();
                    let error = format!(
                        "CLUSTERDOWN redis-proxy could not subscribe within {ms} ms: no reachable primary serves \
                         the channels' slot"
                    );
                    self.clients.push(client, resp::error_reply(&error), &mut self.out);
                    self.run_held(now, client);
                    self.clients.update_reading(client, &mut self.out);
                } else if let Some(cluster) = self.cluster.as_deref_mut() {
                    cluster.shard_subscriptions.unplace(client, batch);
                }
                continue;
            };
            self.send_batch(line, batch);
        }
        if let Some(cluster) = self.cluster.as_deref_mut() {
            if cluster.shard_subscriptions.any_unplaced() {
                cluster.want_refresh();
            }
        }
    }

    /// The line `conn` is lost: its channels wait for the next map (true), or it was no line (false).
    pub(super) fn shard_line_lost(&mut self, conn: ConnId) -> bool {
        let Some(cluster) = self.cluster.as_deref_mut() else { return false };
        if cluster.shard_subscriptions.lost(conn).is_none() {
            return false;
        }
        cluster.want_refresh();
        true
    }

    /// Closes the lines of `client` (it left, or sent `RESET`).
    pub(super) fn close_lines_of(&mut self, client: ConnId) {
        let Some(cluster) = self.cluster.as_deref_mut() else { return };
        for line in cluster.shard_subscriptions.forget(client) {
            self.pool.release_private(line, true, &mut self.out);
        }
    }
}
