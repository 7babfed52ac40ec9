//! Cluster mode's transactions through the engine: `MULTI` opens one, requests are queued (answered `+QUEUED`
//! here), `EXEC` sends the whole batch to its slot's primary (see [`crate::transaction`]), and the first
//! redirection a queued request met is kept for when the batch's `EXEC` answers `EXECABORT`.

use super::*;
use crate::key_slots::{self, KeySlots};
use crate::redirect::redirect_of;
use crate::routed::{Aim, Routed};
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
            Some("discard") if cluster.transactions.discard(conn) => resp::simple_reply("OK"),
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
        self.clients.reply_local(conn, reply, &mut self.out);
        true
    }

    /// `EXEC`: the transaction goes whole to its slot's primary (false: none can be used now, and the transaction
    /// stays queued until the `EXEC` runs again).
    fn exec_transaction(&mut self, now: Instant, conn: ConnId, held: &HeldRequest) -> bool {
        let Some(cluster) = self.cluster.as_deref() else { return true };
        let aim = match cluster.transactions.slot_of(conn) {
            Some(Some(slot)) => Aim::Slot(slot),
            _ => Aim::AnyPrimary,
        };
        // Held while no primary can take it, or while an earlier request of the client waits to be sent again.
        let (open, resend_waiting) = (cluster.transactions.is_open(conn), cluster.requests.resend_waiting_for(conn));
        if open && (resend_waiting || self.cluster_target(now, aim, conn.index()).is_none()) {
            return false;
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

    /// A reply to a request queued in the transaction of `ticket`: the first redirection is kept, for when its
    /// `EXEC` answers `EXECABORT`.
    #[inline(never)]
    pub(super) fn queued_reply(&mut self, ticket: u32, frame: &[u8]) {
        let Some(redirect) = redirect_of(frame) else { return };
        let Some(routed) = self.cluster.as_deref_mut().and_then(|c| c.requests.get_mut(ticket)) else { return };
        routed.queued_redirect.get_or_insert(redirect);
    }
}
