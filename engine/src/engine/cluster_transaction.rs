//! Cluster mode's transactions through the engine: `MULTI` opens one, requests are queued (answered `+QUEUED`
//! here), `EXEC` sends the whole batch to its slot's primary (see [`crate::transaction`]), and the first
//! redirection a queued request met is kept for when the batch's `EXEC` answers `EXECABORT`. A `WATCH` goes to
//! its keys' primary on the client's private connection, and the transaction after it goes there too.

use super::*;
use crate::key_slots::{self, KeySlots};
use crate::redirect::{redirect_of, Redirect};
use crate::routed::{Aim, Routed, Watched};
use crate::transaction::{Batch, Queued};
use bytes::Bytes;

impl Engine {
    /// Whether `conn` is queuing a transaction.
    pub(super) fn queuing(&self, conn: ConnId) -> bool {
        self.cluster.as_deref().is_some_and(|c| c.transactions.is_open(conn))
    }

    /// A step of a transaction: `MULTI` opens it, a request is queued (answered `+QUEUED` here), `DISCARD` drops
    /// it, `EXEC` sends it whole to its slot's primary (false: none can be used now; hold the `EXEC`).
    pub(super) fn transaction_step(
        &mut self,
        now: Instant,
        conn: ConnId,
        held: &HeldRequest,
        command: Option<&str>,
    ) -> bool {
        let max_bytes = self.config.limits.max_request_len;
        let Some(cluster) = self.cluster.as_deref_mut() else { return true };
        let reply = match command {
            Some("multi") if cluster.transactions.begin(conn) => resp::simple_reply("OK"),
            Some("multi") => resp::error_reply("ERR MULTI calls can not be nested"),
            Some("discard") if cluster.transactions.discard(conn) => {
                // DISCARD ends a WATCH too; the private connection is handed back once the replies are out.
                cluster.transactions.unwatch(conn);
                resp::simple_reply("OK")
            }
            Some("discard") => resp::error_reply("ERR DISCARD without MULTI"),
            Some(_) => return self.exec_transaction(now, conn, held),
            None => {
                let slots = match held.spec {
                    Some(spec) if !spec.accepts_arg_count(held.request.arg_count()) => {
                        let error = format!("ERR wrong number of arguments for '{}' command", spec.name);
                        cluster.transactions.queue(conn, held.request.frame(), KeySlots::Cross, 0);
                        self.clients.reply_local(conn, resp::error_reply(&error), &mut self.out);
                        return true;
                    }
                    Some(spec) if spec.name == "watch" => {
                        // Redis refuses WATCH inside MULTI, and the transaction fails at EXEC.
                        cluster.transactions.queue(conn, held.request.frame(), KeySlots::Cross, 0);
                        let error = resp::error_reply("ERR Command not allowed inside a transaction");
                        self.clients.reply_local(conn, error, &mut self.out);
                        return true;
                    }
                    Some(spec) => key_slots::key_slots(&held.request, spec),
                    None => KeySlots::Keyless,
                };
                match cluster.transactions.queue(conn, held.request.frame(), slots, max_bytes) {
                    Queued::Queued => resp::simple_reply("QUEUED"),
                    Queued::Refused(error) => resp::error_reply(error),
                }
            }
        };
        self.out.counters.request(Target::Proxy, Class::of(held.spec));
        if command == Some("discard") {
            self.reply_ending_watch(conn, reply);
        } else {
            self.clients.reply_local(conn, reply, &mut self.out);
        }
        true
    }

    /// Answers `conn` here as its `WATCH` ends (`UNWATCH`, `RESET`, `DISCARD`, or an `EXEC` the proxy answers
    /// itself), and hands its private connection back if no reply is awaited any more: no reply from a server
    /// may come to do it ([`Engine::deliver`]), and the client's next `WATCH` must go where the map says now, not
    /// to the node the last one met a redirection on.
    fn reply_ending_watch(&mut self, conn: ConnId, reply: Bytes) {
        self.clients.reply_local(conn, reply, &mut self.out);
        if let Some(private) = self.clients.settle(conn) {
            self.pool.release_private(private, false, &mut self.out);
        }
    }

    /// `EXEC`: the transaction goes whole to its slot's primary (false: none can be used now, and the transaction
    /// stays queued until the `EXEC` runs again).
    fn exec_transaction(&mut self, now: Instant, conn: ConnId, held: &HeldRequest) -> bool {
        let Some(cluster) = self.cluster.as_deref() else { return true };
        let aim = match cluster.transactions.slot_of(conn) {
            Some(Some(slot)) => Aim::Slot(slot),
            _ => Aim::AnyPrimary,
        };
        let watching = cluster.transactions.watching(conn).is_some();
        // Held while no primary can take it, or while an earlier request of the client waits to be sent again.
        let (open, resend_waiting) = (cluster.transactions.is_open(conn), cluster.requests.resend_waiting_for(conn));
        if open && !watching && (resend_waiting || self.cluster_target(now, aim, conn.index()).is_none()) {
            return false;
        }
        if watching {
            return self.exec_watched(now, conn, held, aim);
        }
        let Some(cluster) = self.cluster.as_deref_mut() else { return true };
        let reply = match cluster.transactions.exec(conn) {
            Batch::NoTransaction => resp::error_reply("ERR EXEC without MULTI"),
            Batch::Aborted => resp::error_reply("EXECABORT Transaction discarded because of previous errors."),
            Batch::Empty => Bytes::from_static(b"*0\r\n"),
            Batch::Send { data, queued, .. } => {
                let Some(state) = self.clients.forward_state(conn) else { return true };
                let shared_slot = state.shared_slot;
                let Some(seq) = self.clients.reserve_slot(conn) else { return true };
                self.out.counters.request(Target::Master, Class::Other);
                let routed = Routed { queued, ..Routed::new(conn, seq, data, aim, held.resp3, shared_slot, now) };
                let ticket = cluster.requests.add(routed);
                self.send_routed(now, ticket, None, false);
                return true;
            }
        };
        self.out.counters.request(Target::Proxy, Class::Other);
        self.clients.reply_local(conn, reply, &mut self.out);
        true
    }

    /// `WATCH` (its keys' primary, on the client's private connection; false: hold it while none can be had),
    /// `UNWATCH` or the `RESET` of a watching client (answered here; the private connection is handed back once
    /// the replies are out).
    pub(super) fn watch_step(&mut self, now: Instant, conn: ConnId, held: &HeldRequest) -> bool {
        let Some(spec) = held.spec else { return true };
        let class = Class::of(held.spec);
        if matches!(spec.name, "unwatch" | "reset") {
            self.out.counters.request(Target::Proxy, class);
            if let Some(cluster) = self.cluster.as_deref_mut() {
                cluster.transactions.unwatch(conn);
                if spec.name == "reset" {
                    cluster.transactions.discard(conn);
                }
            }
            let reply = if spec.name == "reset" { "RESET" } else { "OK" };
            self.reply_ending_watch(conn, resp::simple_reply(reply));
            return true;
        }
        let slot = match key_slots::key_slots(&held.request, spec) {
            KeySlots::One(slot) if spec.accepts_arg_count(held.request.arg_count()) => slot,
            _ if !spec.accepts_arg_count(held.request.arg_count()) => {
                self.out.counters.request(Target::Proxy, class);
                let error = resp::error_reply("ERR wrong number of arguments for 'watch' command");
                self.clients.reply_local(conn, error, &mut self.out);
                return true;
            }
            _ => {
                self.out.counters.request(Target::Proxy, class);
                let error = resp::error_reply("CROSSSLOT Keys in request don't hash to the same slot");
                self.clients.reply_local(conn, error, &mut self.out);
                return true;
            }
        };
        let Some(state) = self.clients.forward_state(conn) else { return true };
        let watched_slot = self.cluster.as_deref().and_then(|c| c.transactions.watching(conn)).map(|w| w.slot);
        if watched_slot.is_some_and(|s| s != slot) {
            self.out.counters.request(Target::Proxy, class);
            let error = resp::error_reply("CROSSSLOT Keys in request don't hash to the same slot");
            self.clients.reply_local(conn, error, &mut self.out);
            return true;
        }
        let backend = match state.private {
            Some(backend) => backend,
            None => {
                let Some(server) = self.cluster_target(now, Aim::Slot(slot), conn.index()) else { return false };
                let Some(backend) = self.pool.acquire_private(server, conn, held.resp3, &mut self.out) else {
                    return false;
                };
                self.clients.set_private(conn, backend);
                backend
            }
        };
        let Some(seq) = self.clients.reserve_slot(conn) else { return true };
        self.out.counters.request(Target::Master, class);
        let Some(cluster) = self.cluster.as_deref_mut() else { return true };
        let _ = cluster.transactions.watch(conn, slot);
        let request = held.request.frame().clone();
        let routed = Routed {
            watched: Some(Watched::Watch),
            ..Routed::new(conn, seq, request.clone(), Aim::Slot(slot), held.resp3, state.shared_slot, now)
        };
        let ticket = cluster.requests.add(routed);
        self.pool.send(backend, &[Waiter::Routed { ticket, sent: now }], request, &mut self.out);
        true
    }

    /// `EXEC` of a watching client: its transaction (maybe empty) goes to the watched keys' primary on the
    /// client's private connection, where Redis checks the watched keys; or, when its `WATCH` met a redirection,
    /// it answers null at once, as when a watched key changed.
    fn exec_watched(&mut self, now: Instant, conn: ConnId, held: &HeldRequest, aim: Aim) -> bool {
        let Some(state) = self.clients.forward_state(conn) else { return true };
        let Some(cluster) = self.cluster.as_deref_mut() else { return true };
        let watch = cluster.transactions.unwatch(conn);
        let (data, queued) = match cluster.transactions.exec(conn) {
            Batch::NoTransaction => {
                self.reply_ending_watch(conn, resp::error_reply("ERR EXEC without MULTI"));
                return true;
            }
            Batch::Aborted => {
                let error = resp::error_reply("EXECABORT Transaction discarded because of previous errors.");
                self.reply_ending_watch(conn, error);
                return true;
            }
            Batch::Empty => (Bytes::from_static(b"*1\r\n$5\r\nMULTI\r\n*1\r\n$4\r\nEXEC\r\n"), 0),
            Batch::Send { data, queued, .. } => (data, queued),
        };
        self.out.counters.request(Target::Master, Class::Other);
        let (Some(backend), Some(false)) = (state.private, watch.map(|w| w.doomed)) else {
            self.reply_ending_watch(conn, null_reply(held.resp3));
            return true;
        };
        let Some(seq) = self.clients.reserve_slot(conn) else { return true };
        let routed = Routed {
            queued,
            watched: Some(Watched::Exec),
            ..Routed::new(conn, seq, data.clone(), aim, held.resp3, state.shared_slot, now)
        };
        let ticket = cluster.requests.add(routed);
        let mut waiters = vec![Waiter::Ignore];
        waiters.extend(std::iter::repeat_n(Waiter::Queued { ticket }, queued));
        waiters.push(Waiter::Routed { ticket, sent: now });
        self.pool.send(backend, &waiters, data, &mut self.out);
        true
    }

    /// The reply to a `WATCH` or a watched `EXEC` (`redirect`: the redirection it, or a queued request, met). It
    /// is never sent elsewhere: a redirection dooms the transaction (a `WATCH` is answered `+OK` all the same,
    /// and its `EXEC` null), and a `MOVED` fixes the map for the client's next try.
    pub(super) fn watched_reply(
        &mut self,
        now: Instant,
        ticket: u32,
        watched: Watched,
        redirect: Option<Redirect>,
        frame: Bytes,
    ) {
        let Some(redirect) = redirect else { return self.routed_answered(now, ticket, frame) };
        if let Redirect::Moved { slot, address } = &redirect {
            if let Some(server) = self.monitor.find(address) {
                if let Some(cluster) = self.cluster.as_deref_mut() {
                    cluster.moved(*slot, server);
                }
            }
        }
        let Some(cluster) = self.cluster.as_deref_mut() else { return };
        let Some(routed) = cluster.requests.get_mut(ticket) else { return };
        let (client, resp3) = (routed.client, routed.resp3);
        cluster.want_refresh();
        let reply = match watched {
            Watched::Watch => {
                cluster.transactions.doom(client);
                resp::simple_reply("OK")
            }
            Watched::Exec => null_reply(resp3),
        };
        self.routed_answered(now, ticket, reply);
    }

    /// A reply to a request queued in the transaction of `ticket`: the first redirection is kept, for when its
    /// `EXEC` answers `EXECABORT`.
    #[inline(never)]
    pub(super) fn queued_reply(&mut self, ticket: u32, frame: &[u8]) {
        let Some(redirect) = redirect_of(frame) else { return };
        let Some(routed) = self.cluster.as_deref_mut().and_then(|c| c.requests.get_mut(ticket)) else { return };
        routed.queued_redirect.get_or_insert(redirect);
    }
}

/// The null reply of an `EXEC` whose watched keys changed (or may have).
fn null_reply(resp3: bool) -> Bytes {
    Bytes::from_static(if resp3 { b"_\r\n" } else { b"*-1\r\n" })
}
