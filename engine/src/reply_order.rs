//! One client's replies in request order. Each request that expects a reply takes a slot, numbered in the order
//! the client sent them; replies fill their slots in whatever order the servers answer (a client's requests may
//! be spread over the master, replicas and out-of-band connections), and a reply is written only once every
//! reply before it is out. Replies the proxy makes itself queue behind those still awaited.
//!
//! The request and reply paths go through here for every request: everything is small and inlined into the
//! `client` machine's callers (`bench/instructions.sh` counts it).
//!
//! In cluster mode one read's requests are spread over several nodes, whose replies come back at different times:
//! written as each came, a pipeline's replies would take a write, and the client a wake-up, per node. There
//! [`ReadBatches`] holds the replies of one read until the read's last one is in, and they go out together, as
//! Redis writes a pipeline's replies together.

use bytes::Bytes;
use std::collections::VecDeque;

/// The reply slots of one client, oldest first.
#[derive(Default)]
pub(crate) struct ReplyOrder {
    /// Replies in request order; None while awaited. The front is request number `first_seq`.
    slots: VecDeque<Option<Bytes>>,
    first_seq: u64,
}

impl ReplyOrder {
    /// Replies the client is still owed: awaited ones, and those waiting behind them.
    #[inline(always)]
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether every reply is out: then a reply of the proxy's own may be written at once.
    #[inline(always)]
    pub(crate) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Takes the next slot, awaited, and returns its sequence number (the one its reply is filled in with).
    #[inline(always)]
    pub(crate) fn await_reply(&mut self) -> u64 {
        let seq = self.first_seq + self.slots.len() as u64;
        self.slots.push_back(None);
        seq
    }

    /// Queues a reply of the proxy's own behind the replies still owed (when none is, it is written at once
    /// instead, and takes no slot).
    #[inline(always)]
    pub(crate) fn push_local(&mut self, reply: Bytes) {
        self.slots.push_back(Some(reply));
    }

    /// Whether slot `seq` is one of the slots still owed (not yet written, not unknown).
    #[inline(always)]
    pub(crate) fn owes(&self, seq: u64) -> bool {
        seq.checked_sub(self.first_seq).is_some_and(|index| index < self.slots.len() as u64)
    }

    /// Takes slot `seq` off when it is the next reply owed: true, and its reply is to be written now (then
    /// [`ReplyOrder::pop_ready`] gives the ones that were waiting behind it). False otherwise: the reply goes to
    /// [`ReplyOrder::fill_later`]. (Two steps, so that the reply on the hot path never moves in and out of here.)
    #[inline(always)]
    pub(crate) fn take_if_next(&mut self, seq: u64) -> bool {
        if self.first_seq != seq || self.slots.is_empty() {
            return false;
        }
        self.slots.pop_front();
        self.first_seq += 1;
        true
    }

    /// Fills slot `seq`, which is not next, with `reply`: it waits there until every reply before it is out. A
    /// `seq` that is not owed (already written, or never taken) is dropped.
    #[inline(always)]
    pub(crate) fn fill_later(&mut self, seq: u64, reply: Bytes) {
        if let Some(slot) = seq.checked_sub(self.first_seq).and_then(|index| self.slots.get_mut(index as usize)) {
            *slot = Some(reply);
        }
    }

    /// The next reply owed, taken off the slots when it is ready to be written.
    #[inline(always)]
    pub(crate) fn pop_ready(&mut self) -> Option<Bytes> {
        let ready = self.slots.front_mut().and_then(Option::take)?;
        self.slots.pop_front();
        self.first_seq += 1;
        Some(ready)
    }

    /// The number the next slot taken will have.
    pub(crate) fn next_seq(&self) -> u64 {
        self.first_seq + self.slots.len() as u64
    }

    /// How many replies, from the oldest owed, are in (none awaited among them), given that the first `known`
    /// are.
    pub(crate) fn ready_from(&self, known: usize) -> usize {
        let mut ready = known;
        while let Some(Some(_)) = self.slots.get(ready) {
            ready += 1;
        }
        ready
    }

    /// The oldest reply owed's number.
    pub(crate) fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// Whether slot `seq` is the next reply owed (every earlier one is out), so pieces of a large reply for it may
    /// be written as they arrive; the slot stays owed until the whole reply fills it.
    #[inline(always)]
    pub(crate) fn is_next(&self, seq: u64) -> bool {
        self.first_seq == seq
    }
}

/// Where a client's reads begin among its reply slots (cluster mode): replies of one read go out together.
#[derive(Debug, Default)]
pub(crate) struct ReadBatches {
    /// The first slot number of each read still owed replies, oldest first (a few: one per read in flight).
    starts: Vec<u64>,
    /// How many of the oldest replies owed are in, counted as they fill (counting them again at each reply
    /// would cost a pipeline of n replies n²/2 steps).
    ready: usize,
}

impl ReadBatches {
    /// A read begins; its requests will take slots from `next_seq` on.
    pub(crate) fn begin(&mut self, next_seq: u64) {
        if self.starts.last() != Some(&next_seq) {
            self.starts.push(next_seq);
        }
    }

    /// Every reply owed went out: the reads recorded so far are over.
    pub(crate) fn clear(&mut self) {
        self.starts.clear();
        self.ready = 0;
    }

    /// Fills slot `seq` of `order` with `reply`; returns how many replies may be written now (the caller takes
    /// them with [`ReplyOrder::pop_ready`]).
    pub(crate) fn fill(&mut self, order: &mut ReplyOrder, seq: u64, reply: Bytes) -> usize {
        let index = seq.wrapping_sub(order.first_seq());
        order.fill_later(seq, reply);
        if index != self.ready as u64 {
            // Not the oldest reply awaited: nothing more is in order to go out.
            return 0;
        }
        self.ready = order.ready_from(self.ready);
        if !self.may_release(order.first_seq(), self.ready, order.len()) {
            return 0;
        }
        self.release(order, true)
    }

    /// How many replies of `order` that are in may be written now: those of reads whose every reply is in
    /// (`by_read`), or all of them. They are counted off as written.
    pub(crate) fn release(&mut self, order: &ReplyOrder, by_read: bool) -> usize {
        let (first, owed) = (order.first_seq(), order.len());
        let ready = order.ready_from(self.ready);
        let count = if by_read || ready == owed { self.releasable(first, ready, owed) } else { ready };
        self.ready = ready - count;
        count
    }

    /// Whether [`ReadBatches::releasable`] would give any: every reply owed is in, or a read that began after the
    /// oldest reply owed begins at or before the first awaited one (the reads before it are complete).
    fn may_release(&self, first_seq: u64, ready: usize, owed: usize) -> bool {
        let awaited = first_seq + ready as u64;
        ready == owed || self.starts.iter().any(|start| *start > first_seq && *start <= awaited)
    }

    /// How many of the `ready` replies in from slot `first_seq` on may be written now, when `owed` replies are
    /// owed in all: every one when none is awaited after them; otherwise those of the reads before the read of
    /// the first awaited reply (that read's replies wait for it).
    fn releasable(&mut self, first_seq: u64, ready: usize, owed: usize) -> usize {
        if ready == owed {
            // Every reply owed goes: the reads recorded so far are over.
            self.starts.clear();
            return ready;
        }
        let awaited = first_seq + ready as u64;
        let read_of_awaited = self.starts.iter().rev().find(|start| **start <= awaited).copied();
        let count = read_of_awaited.map_or(0, |start| start.saturating_sub(first_seq) as usize).min(ready);
        // Reads that began before the oldest reply still owed are over.
        let over = first_seq + count as u64;
        self.starts.retain(|start| *start >= over);
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(text: &'static str) -> Bytes {
        Bytes::from_static(text.as_bytes())
    }

    /// Fills `seq` as the `client` machine does, and returns everything that may be written now, in order.
    fn fill_and_drain(order: &mut ReplyOrder, seq: u64, text: &'static str) -> Vec<Bytes> {
        if !order.take_if_next(seq) {
            order.fill_later(seq, reply(text));
            return Vec::new();
        }
        std::iter::once(reply(text)).chain(std::iter::from_fn(|| order.pop_ready())).collect()
    }

    /// Fills `seq` as the `client` machine does in cluster mode, and returns what may be written now, in order.
    fn fill_in_batches(order: &mut ReplyOrder, batches: &mut ReadBatches, seq: u64, text: &'static str) -> Vec<Bytes> {
        let count = batches.fill(order, seq, reply(text));
        (0..count).filter_map(|_| order.pop_ready()).collect()
    }

    /// A reply of the proxy's own, as the `client` machine answers it: given back when it may be written now.
    fn local(order: &mut ReplyOrder, reply: Bytes) -> Option<Bytes> {
        if order.is_empty() {
            return Some(reply);
        }
        order.push_local(reply);
        None
    }

    #[test]
    fn slots_are_numbered_in_request_order() {
        let mut order = ReplyOrder::default();
        assert!(order.is_empty());
        assert_eq!((order.await_reply(), order.await_reply(), order.await_reply()), (0, 1, 2));
        assert_eq!(order.len(), 3);
        assert_eq!(fill_and_drain(&mut order, 0, "a"), [reply("a")]);
        assert_eq!(order.await_reply(), 3, "numbers keep counting after replies went out");
        assert_eq!(order.len(), 3);
    }

    #[test]
    fn replies_out_of_order_are_written_in_request_order() {
        let mut order = ReplyOrder::default();
        for _ in 0..4 {
            order.await_reply();
        }
        assert!(fill_and_drain(&mut order, 2, "c").is_empty(), "waits for 0 and 1");
        assert!(fill_and_drain(&mut order, 1, "b").is_empty(), "waits for 0");
        assert_eq!(order.len(), 4);
        assert_eq!(fill_and_drain(&mut order, 0, "a"), [reply("a"), reply("b"), reply("c")]);
        assert_eq!(order.len(), 1, "3 is still awaited");
        assert_eq!(fill_and_drain(&mut order, 3, "d"), [reply("d")]);
        assert!(order.is_empty());
    }

    #[test]
    fn a_reply_for_a_slot_not_owed_is_dropped() {
        let mut order = ReplyOrder::default();
        order.await_reply();
        order.await_reply();
        assert!(!order.owes(2), "never taken");
        assert!(fill_and_drain(&mut order, 2, "x").is_empty());
        assert!(fill_and_drain(&mut order, u64::MAX, "x").is_empty());
        assert_eq!(order.len(), 2);
        assert_eq!(fill_and_drain(&mut order, 0, "a"), [reply("a")]);
        assert!(!order.owes(0), "already written");
        assert!(fill_and_drain(&mut order, 0, "again").is_empty(), "a slot written once is not written twice");
        assert_eq!(order.len(), 1);
        assert!(order.owes(1));
        assert_eq!(fill_and_drain(&mut order, 1, "b"), [reply("b")]);
    }

    #[test]
    fn a_waiting_slot_filled_twice_keeps_the_later_reply() {
        let mut order = ReplyOrder::default();
        order.await_reply();
        order.await_reply();
        assert!(fill_and_drain(&mut order, 1, "first").is_empty());
        assert!(fill_and_drain(&mut order, 1, "second").is_empty());
        assert_eq!(fill_and_drain(&mut order, 0, "a"), [reply("a"), reply("second")]);
    }

    #[test]
    fn local_replies_are_written_at_once_only_when_nothing_is_owed() {
        let mut order = ReplyOrder::default();
        assert_eq!(local(&mut order, reply("now")), Some(reply("now")));
        assert!(order.is_empty(), "a reply written at once takes no slot");
        assert_eq!(order.await_reply(), 0);
        assert_eq!(local(&mut order, reply("L1")), None, "behind the awaited reply");
        assert_eq!(order.await_reply(), 2, "a local reply counts as a slot");
        assert_eq!(local(&mut order, reply("L3")), None);
        assert_eq!(order.len(), 4);
        assert!(fill_and_drain(&mut order, 2, "b").is_empty());
        assert_eq!(fill_and_drain(&mut order, 0, "a"), [reply("a"), reply("L1"), reply("b"), reply("L3")]);
        assert!(order.is_empty());
        assert_eq!(local(&mut order, reply("later")), Some(reply("later")));
    }

    #[test]
    fn a_local_reply_waits_for_the_awaited_reply_behind_it() {
        let mut order = ReplyOrder::default();
        order.await_reply();
        assert_eq!(local(&mut order, reply("L")), None);
        assert_eq!(order.await_reply(), 2);
        assert_eq!(fill_and_drain(&mut order, 0, "a"), [reply("a"), reply("L")], "stops at the awaited 2");
        assert_eq!(order.pop_ready(), None);
        assert_eq!(local(&mut order, reply("M")), None, "2 is still owed");
        assert_eq!(fill_and_drain(&mut order, 2, "b"), [reply("b"), reply("M")]);
    }

    #[test]
    fn only_the_next_slot_may_stream() {
        let mut order = ReplyOrder::default();
        order.await_reply();
        order.await_reply();
        assert!(order.is_next(0));
        assert!(!order.is_next(1), "its pieces would overtake reply 0");
        // Pieces of reply 0 go out as they arrive; the slot stays owed until the last piece fills it.
        assert!(order.owes(0));
        assert_eq!(order.len(), 2);
        assert_eq!(fill_and_drain(&mut order, 0, "last piece"), [reply("last piece")]);
        assert!(order.is_next(1));
        assert!(!order.is_next(0));
    }

    #[test]
    fn pop_ready_gives_nothing_while_the_front_is_awaited() {
        let mut order = ReplyOrder::default();
        assert_eq!(order.pop_ready(), None);
        order.await_reply();
        assert_eq!(local(&mut order, reply("L")), None);
        assert_eq!(order.pop_ready(), None);
        assert_eq!(order.len(), 2);
    }

    #[test]
    fn one_reads_replies_go_out_together_once_its_last_is_in() {
        let mut order = ReplyOrder::default();
        let mut batches = ReadBatches::default();
        batches.begin(order.next_seq());
        let first: Vec<u64> = (0..3).map(|_| order.await_reply()).collect();
        batches.begin(order.next_seq());
        let second: Vec<u64> = (0..2).map(|_| order.await_reply()).collect();
        // The first read's first two replies wait for its third; the second read's wait for the first's.
        assert!(fill_in_batches(&mut order, &mut batches, first[0], "a").is_empty());
        assert!(fill_in_batches(&mut order, &mut batches, second[0], "d").is_empty());
        assert!(fill_in_batches(&mut order, &mut batches, first[1], "b").is_empty());
        assert_eq!(fill_in_batches(&mut order, &mut batches, first[2], "c"), [reply("a"), reply("b"), reply("c")]);
        // The second read: its first reply is in, its second not.
        assert_eq!(order.len(), 2);
        assert_eq!(fill_in_batches(&mut order, &mut batches, second[1], "e"), [reply("d"), reply("e")]);
        assert!(order.is_empty());
    }

    #[test]
    fn a_read_s_replies_go_out_even_when_a_later_read_s_are_awaited() {
        let mut order = ReplyOrder::default();
        let mut batches = ReadBatches::default();
        batches.begin(order.next_seq());
        let first = order.await_reply();
        batches.begin(order.next_seq());
        let second = [order.await_reply(), order.await_reply()];
        assert_eq!(fill_in_batches(&mut order, &mut batches, first, "a"), [reply("a")]);
        assert!(fill_in_batches(&mut order, &mut batches, second[0], "b").is_empty());
        // Replies of the proxy's own queue behind: they go out with the read before them.
        order.push_local(reply("local"));
        assert_eq!(fill_in_batches(&mut order, &mut batches, second[1], "c"), [reply("b"), reply("c"), reply("local")]);
    }

    #[test]
    fn replies_of_requests_with_no_recorded_read_wait_as_one_read() {
        let mut order = ReplyOrder::default();
        let mut batches = ReadBatches::default();
        let slots = [order.await_reply(), order.await_reply()];
        // No read began (requests run later from the hold queue): the first reply waits for the second, as one read.
        assert!(fill_in_batches(&mut order, &mut batches, slots[0], "a").is_empty());
        assert_eq!(fill_in_batches(&mut order, &mut batches, slots[1], "b"), [reply("a"), reply("b")]);
    }

    proptest::proptest! {
        /// Reads, slots taken and replies filled in any order, as the client machine does it in cluster mode:
        /// the quick test agrees with the count, replies go out in request order, and a reply that is in waits
        /// only for an awaited reply of its own read.
        #[test]
        fn replies_go_out_in_order_and_a_read_at_a_time(ops in proptest::collection::vec((0u8..3, 0usize..8), 0..60)) {
            let mut order = ReplyOrder::default();
            let mut batches = ReadBatches::default();
            let (mut awaited, mut written, mut read_of) = (Vec::new(), Vec::new(), Vec::new());
            for (op, pick) in ops {
                match op {
                    0 => batches.begin(order.next_seq()),
                    1 => {
                        read_of.push(batches.starts.last().copied());
                        awaited.push(order.await_reply());
                    }
                    _ if awaited.is_empty() => {}
                    _ => {
                        let seq = awaited.remove(pick % awaited.len());
                        order.fill_later(seq, Bytes::from(seq.to_string()));
                        batches.ready = order.ready_from(batches.ready);
                        let may = batches.may_release(order.first_seq(), batches.ready, order.len());
                        let count = batches.releasable(order.first_seq(), batches.ready, order.len());
                        proptest::prop_assert_eq!(may, count > 0);
                        batches.ready -= count;
                        written.extend((0..count).filter_map(|_| order.pop_ready()));
                    }
                }
                let expected: Vec<Bytes> = (0..written.len() as u64).map(|seq| Bytes::from(seq.to_string())).collect();
                proptest::prop_assert_eq!(&written, &expected);
                // A reply in and still owed waits for the first awaited one of its own read.
                let oldest = written.len() as u64;
                if !order.is_empty() && !awaited.contains(&oldest) {
                    let first_awaited = awaited.iter().min().copied();
                    proptest::prop_assert!(first_awaited.is_some(), "nothing is awaited, yet {} waits", oldest);
                    let first_awaited = first_awaited.unwrap_or_default();
                    proptest::prop_assert_eq!(read_of[oldest as usize], read_of[first_awaited as usize]);
                }
            }
        }
    }
}
