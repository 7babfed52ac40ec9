//! Cluster mode's sharded subscriptions (`SSUBSCRIBE`). A shard channel lives on the primary of its slot, so a
//! client's shard channels are followed through one connection per primary they live on: its "lines". The proxy
//! keeps which channels each client follows and on which line, so that when a line's node is lost, or a slot
//! moves away (the server then sends its own `sunsubscribe`), the channels are subscribed again on the slot's
//! owner and the client stays subscribed without seeing it.
//!
//! What the client sees is the proxy's account, as one Redis connection would give it: each `ssubscribe`
//! confirmation, sent when the server confirmed, carries the count over all the client's lines; `SUNSUBSCRIBE`
//! is answered by the proxy at once, and messages of a channel the client left are not passed on.

use crate::conn::ConnId;
use crate::resp::{bulk_reply, Request};
use crate::server_id::ServerId;
use crate::slot::key_slot;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

/// One `SSUBSCRIBE` of channels of one slot, sent or to be sent on a line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Batch {
    /// The channels, all of one slot.
    pub(crate) channels: Vec<Bytes>,
    /// The client sent it and awaits its confirmations; otherwise the proxy subscribes again what the client
    /// follows already, and the confirmations are not the client's.
    pub(crate) for_client: bool,
    /// How many `MOVED`s it met: past [`crate::cluster::MAX_REDIRECTS`] the map does not settle.
    pub(crate) redirects: u8,
    /// When the client sent it (for the client's own): it waits for a usable primary no longer than `hold_ms`.
    pub(crate) since: Option<Instant>,
    confirmed: usize,
}

impl Batch {
    /// The proxy's own batch of `channels` (of one slot), which the client follows already.
    pub(crate) fn new(channels: Vec<Bytes>) -> Batch {
        Batch { channels, for_client: false, redirects: 0, since: None, confirmed: 0 }
    }

    /// The client's `SSUBSCRIBE` of `channels` (of one slot), sent at `now`.
    pub(crate) fn of_client(channels: Vec<Bytes>, now: Instant) -> Batch {
        Batch { for_client: true, since: Some(now), ..Batch::new(channels) }
    }

    /// The slot of its channels.
    pub(crate) fn slot(&self) -> u16 {
        self.channels.first().map_or(0, |c| key_slot(c))
    }

    /// The `SSUBSCRIBE` that sends it.
    pub(crate) fn request(&self) -> Bytes {
        let mut args: Vec<&[u8]> = vec![b"SSUBSCRIBE"];
        args.extend(self.channels.iter().map(|c| c.as_ref()));
        Request::from_args(&args).frame().clone()
    }
}

/// A connection carrying some of one client's shard channels, to one node.
#[derive(Debug)]
struct Line {
    client: ConnId,
    server: ServerId,
    /// The `SSUBSCRIBE`s sent on it whose confirmations are not all in, oldest first.
    awaiting: VecDeque<Batch>,
}

/// One client's shard channels.
#[derive(Debug, Default)]
struct Followed {
    /// Each channel it follows, and the line it is on (None: being moved to its slot's owner).
    channels: BTreeMap<Bytes, Option<ConnId>>,
    /// Its lines, by node.
    lines: Vec<(ServerId, ConnId)>,
    /// Batches waiting for a usable primary of their slot.
    unplaced: Vec<Batch>,
}

/// What a frame that came on a line asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LineFrame {
    /// Nothing: the proxy's own confirmation, a message of a channel the client left, an `OK`.
    Nothing,
    /// Pass this to `client`; `confirmed` when it completed an `SSUBSCRIBE` of the client's (its later requests
    /// may go now).
    ToClient { client: ConnId, frame: Bytes, confirmed: bool },
    /// The node dropped a channel the client follows (its slot moved away): it is to be placed again once the
    /// map shows the slot's owner.
    Dropped,
    /// The node refused `batch` with the error `frame`.
    Refused { client: ConnId, batch: Batch, frame: Bytes },
    /// The proxy's own subscription came back for a channel the client left meanwhile: send this on the line.
    Send(Bytes),
    /// The proxy's own subscription of `channels` channels of `client` is confirmed by `server`: they were moved
    /// there.
    Moved { client: ConnId, server: ServerId, channels: usize },
}

/// The sharded subscriptions of every client.
#[derive(Debug, Default)]
pub(crate) struct ShardSubscriptions {
    lines: HashMap<ConnId, Line>,
    clients: HashMap<ConnId, Followed>,
}

impl ShardSubscriptions {
    /// Whether `conn` is a line (checked for each frame of a private connection in cluster mode).
    #[inline]
    pub(crate) fn is_line(&self, conn: ConnId) -> bool {
        !self.lines.is_empty() && self.lines.contains_key(&conn)
    }

    /// The line of `client` to `server`, if it has one.
    pub(crate) fn line_to(&self, client: ConnId, server: ServerId) -> Option<ConnId> {
        let followed = self.clients.get(&client)?;
        followed.lines.iter().find(|(s, _)| *s == server).map(|(_, line)| *line)
    }

    /// `conn` is a new line of `client` to `server`.
    pub(crate) fn add_line(&mut self, client: ConnId, server: ServerId, conn: ConnId) {
        self.lines.insert(conn, Line { client, server, awaiting: VecDeque::new() });
        self.clients.entry(client).or_default().lines.push((server, conn));
    }

    /// `batch` went out on `line`.
    pub(crate) fn sent(&mut self, line: ConnId, batch: Batch) {
        if let Some(line) = self.lines.get_mut(&line) {
            line.awaiting.push_back(batch);
        }
    }

    /// Whether `client` follows shard channels, or has asked to.
    pub(crate) fn subscribes(&self, client: ConnId) -> bool {
        self.clients.contains_key(&client)
    }

    /// Whether `client` awaits the confirmation of an `SSUBSCRIBE` on a line other than `except` (or not sent
    /// yet): its next request must wait for it, so that its replies keep their order.
    pub(crate) fn awaits_confirmation(&self, client: ConnId, except: Option<ConnId>) -> bool {
        let Some(followed) = self.clients.get(&client) else { return false };
        followed.unplaced.iter().any(|b| b.for_client)
            || followed
                .lines
                .iter()
                .filter(|(_, line)| Some(*line) != except)
                .any(|(_, line)| self.lines.get(line).is_some_and(|l| l.awaiting.iter().any(|b| b.for_client)))
    }

    /// What a frame `frame` that came on `conn` asks for; `resp3` says how the client speaks.
    pub(crate) fn frame(&mut self, conn: ConnId, frame: Bytes, resp3: bool) -> LineFrame {
        let Some(line) = self.lines.get_mut(&conn) else { return LineFrame::Nothing };
        let client = line.client;
        if frame.first() == Some(&b'-') {
            // Redis checks the slot before it subscribes anything: an error is the whole batch's answer.
            return match line.awaiting.pop_front() {
                Some(batch) => LineFrame::Refused { client, batch, frame },
                None => LineFrame::Nothing,
            };
        }
        let Some((kind, channel)) = pubsub_frame(&frame) else { return LineFrame::Nothing };
        let Some(channel) = channel else { return LineFrame::Nothing };
        let channel = Bytes::copy_from_slice(channel);
        match kind {
            b"smessage" => {
                let follows = self.clients.get(&client).is_some_and(|f| f.channels.contains_key(&channel));
                if follows {
                    LineFrame::ToClient { client, frame, confirmed: false }
                } else {
                    LineFrame::Nothing
                }
            }
            b"ssubscribe" => {
                let server = line.server;
                let Some(batch) = line.awaiting.front_mut() else { return LineFrame::Nothing };
                batch.confirmed += 1;
                let (for_client, done) = (batch.for_client, batch.confirmed >= batch.channels.len());
                let batch_size = batch.channels.len();
                if done {
                    line.awaiting.pop_front();
                }
                let followed = self.clients.entry(client).or_default();
                if for_client {
                    followed.channels.insert(channel.clone(), Some(conn));
                    let frame = confirmation(b"ssubscribe", Some(&channel), followed.channels.len(), resp3);
                    LineFrame::ToClient { client, frame, confirmed: done }
                } else if let Some(on) = followed.channels.get_mut(&channel) {
                    *on = Some(conn);
                    if done {
                        LineFrame::Moved { client, server, channels: batch_size }
                    } else {
                        LineFrame::Nothing
                    }
                } else {
                    LineFrame::Send(Request::from_args(&[&b"SUNSUBSCRIBE"[..], &channel]).frame().clone())
                }
            }
            b"sunsubscribe" => {
                let Some(followed) = self.clients.get_mut(&client) else { return LineFrame::Nothing };
                match followed.channels.get_mut(&channel) {
                    Some(on) if *on == Some(conn) => {
                        *on = None;
                        unplace(followed, Batch::new(vec![channel]));
                        LineFrame::Dropped
                    }
                    // The answer to the proxy's own `SUNSUBSCRIBE`, or a channel being moved already.
                    _ => LineFrame::Nothing,
                }
            }
            _ => LineFrame::Nothing,
        }
    }

    /// `client`'s `SUNSUBSCRIBE` of `channels` (none: all it follows): the confirmations the client gets now,
    /// and the `SUNSUBSCRIBE`s to send on its lines.
    pub(crate) fn unsubscribe(
        &mut self,
        client: ConnId,
        channels: &[&[u8]],
        resp3: bool,
    ) -> (Bytes, Vec<(ConnId, Bytes)>) {
        let mut nothing = Followed::default();
        let followed = self.clients.get_mut(&client).unwrap_or(&mut nothing);
        let leaving: Vec<Bytes> = if channels.is_empty() {
            followed.channels.keys().cloned().collect()
        } else {
            channels.iter().map(|c| Bytes::copy_from_slice(c)).collect()
        };
        let mut reply = Vec::new();
        let mut by_line: BTreeMap<ConnId, Vec<Bytes>> = BTreeMap::new();
        for channel in &leaving {
            if let Some(on) = followed.channels.remove(channel) {
                if let Some(line) = on {
                    by_line.entry(line).or_default().push(channel.clone());
                }
                for batch in &mut followed.unplaced {
                    batch.channels.retain(|c| c != channel);
                }
            }
            reply.extend_from_slice(&confirmation(b"sunsubscribe", Some(channel), followed.channels.len(), resp3));
        }
        followed.unplaced.retain(|b| !b.channels.is_empty());
        if leaving.is_empty() {
            reply.extend_from_slice(&confirmation(b"sunsubscribe", None, 0, resp3));
        }
        let sends = by_line
            .into_iter()
            .map(|(line, channels)| {
                let mut args: Vec<&[u8]> = vec![b"SUNSUBSCRIBE"];
                args.extend(channels.iter().map(|c| c.as_ref()));
                (line, Request::from_args(&args).frame().clone())
            })
            .collect();
        (Bytes::from(reply), sends)
    }

    /// `batch` of `client` waits for a usable primary of its slot.
    pub(crate) fn unplace(&mut self, client: ConnId, batch: Batch) {
        if let Some(followed) = self.clients.get_mut(&client) {
            unplace(followed, batch);
        }
    }

    /// The channels of `batch` are given up (redirected too often, or refused): the client follows them no more. Returns the
    /// `sunsubscribe` frames that tell it so, as Redis tells a client whose channel's slot it lost.
    pub(crate) fn give_up(&mut self, client: ConnId, batch: &Batch, resp3: bool) -> Bytes {
        let Some(followed) = self.clients.get_mut(&client) else { return Bytes::new() };
        let mut told = Vec::new();
        for channel in &batch.channels {
            if followed.channels.remove(channel).is_some() {
                told.extend_from_slice(&confirmation(b"sunsubscribe", Some(channel), followed.channels.len(), resp3));
            }
        }
        Bytes::from(told)
    }

    /// Whether some batch waits to be placed.
    pub(crate) fn any_unplaced(&self) -> bool {
        self.clients.values().any(|f| !f.unplaced.is_empty())
    }

    /// Takes every batch waiting to be placed, with its client.
    pub(crate) fn take_unplaced(&mut self) -> Vec<(ConnId, Batch)> {
        let mut taken = Vec::new();
        for (client, followed) in &mut self.clients {
            taken.extend(followed.unplaced.drain(..).map(|batch| (*client, batch)));
        }
        taken
    }

    /// The line `conn` is lost with its node: what it carried waits to be placed again (the client's own
    /// batches still owe it their confirmations). Returns its client and node, or None when it was no line.
    pub(crate) fn lost(&mut self, conn: ConnId) -> Option<(ConnId, ServerId)> {
        let line = self.lines.remove(&conn)?;
        let followed = self.clients.get_mut(&line.client)?;
        followed.lines.retain(|(_, l)| *l != conn);
        let mut moving: BTreeMap<u16, Vec<Bytes>> = BTreeMap::new();
        for (channel, on) in &mut followed.channels {
            if *on == Some(conn) {
                *on = None;
                moving.entry(key_slot(channel)).or_default().push(channel.clone());
            }
        }
        for batch in line.awaiting {
            if batch.for_client {
                // The channels confirmed already are followed, and moved above; the client awaits the rest.
                let rest = batch.channels[batch.confirmed.min(batch.channels.len())..].to_vec();
                if !rest.is_empty() {
                    followed.unplaced.push(Batch { channels: rest, confirmed: 0, ..batch });
                }
            } else {
                for channel in batch.channels {
                    if followed.channels.get(&channel) == Some(&None) {
                        moving.entry(key_slot(&channel)).or_default().push(channel);
                    }
                }
            }
        }
        for (_, mut channels) in moving {
            channels.dedup();
            unplace(followed, Batch::new(channels));
        }
        Some((line.client, line.server))
    }

    /// Forgets `client` (gone, or `RESET`): returns its lines, to be closed.
    pub(crate) fn forget(&mut self, client: ConnId) -> Vec<ConnId> {
        let Some(followed) = self.clients.remove(&client) else { return Vec::new() };
        let lines: Vec<ConnId> = followed.lines.into_iter().map(|(_, line)| line).collect();
        for line in &lines {
            self.lines.remove(line);
        }
        lines
    }
}

/// Adds `batch` to the ones waiting, merged into one of the proxy's own for the same slot.
fn unplace(followed: &mut Followed, batch: Batch) {
    if !batch.for_client {
        let slot = batch.slot();
        if let Some(same) = followed.unplaced.iter_mut().find(|b| !b.for_client && b.slot() == slot) {
            for channel in batch.channels {
                if !same.channels.contains(&channel) {
                    same.channels.push(channel);
                }
            }
            same.redirects = same.redirects.max(batch.redirects);
            return;
        }
    }
    followed.unplaced.push(batch);
}

/// The kind and channel of a pub/sub frame (`*3` in RESP2, `>3` in RESP3): its first two elements, the
/// channel None when it is null (an unsubscription of nothing). None for any other frame.
fn pubsub_frame(frame: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    fn line(frame: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let end = at + memchr::memchr(b'\r', frame.get(at..)?)?;
        Some((frame.get(at..end)?, end + 2))
    }
    fn bulk(frame: &[u8], at: usize) -> Option<(Option<&[u8]>, usize)> {
        let (header, at) = line(frame, at)?;
        match header {
            b"$-1" | b"_" => Some((None, at)),
            [b'$', len @ ..] => {
                let len: usize = std::str::from_utf8(len).ok()?.parse().ok()?;
                Some((Some(frame.get(at..at.checked_add(len)?)?), at + len + 2))
            }
            _ => None,
        }
    }
    let (header, at) = line(frame, 0)?;
    if !matches!(header, b"*3" | b">3") {
        return None;
    }
    let (kind, at) = bulk(frame, at)?;
    let (channel, _) = bulk(frame, at)?;
    Some((kind?, channel))
}

/// A (un)subscription confirmation, as Redis sends it in the client's protocol.
fn confirmation(kind: &[u8], channel: Option<&[u8]>, count: usize, resp3: bool) -> Bytes {
    let mut frame = Vec::with_capacity(48 + channel.map_or(0, <[u8]>::len));
    frame.extend_from_slice(if resp3 { b">3\r\n" } else { b"*3\r\n" });
    frame.extend_from_slice(&bulk_reply(kind));
    match channel {
        Some(channel) => frame.extend_from_slice(&bulk_reply(channel)),
        None if resp3 => frame.extend_from_slice(b"_\r\n"),
        None => frame.extend_from_slice(b"$-1\r\n"),
    }
    frame.extend_from_slice(format!(":{count}\r\n").as_bytes());
    Bytes::from(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::{ConnTable, Lane};

    fn ids(n: usize) -> Vec<ConnId> {
        let mut table = ConnTable::new(Lane::Client);
        (0..n).map(|_| table.insert(())).collect()
    }

    fn push(kind: &str, channel: &str, last: &str) -> Bytes {
        let last = if last.starts_with(':') { format!("{last}\r\n") } else { format!("${}\r\n{last}\r\n", last.len()) };
        Bytes::from(format!("*3\r\n${}\r\n{kind}\r\n${}\r\n{channel}\r\n{last}", kind.len(), channel.len()))
    }

    fn server(n: usize) -> ServerId {
        let mut table = crate::server_id::ServerTable::default();
        for _ in 0..n {
            table.insert(table.vacant_id(), ());
        }
        table.vacant_id()
    }

    #[test]
    fn confirmations_count_over_every_line_and_unsubscribing_is_answered_at_once() {
        let [client, line_a, line_b] = ids(3)[..] else { unreachable!() };
        let mut shards = ShardSubscriptions::default();
        shards.add_line(client, server(0), line_a);
        shards.add_line(client, server(1), line_b);
        shards.sent(line_a, Batch::of_client(vec![Bytes::from("a")], Instant::now()));
        assert!(shards.awaits_confirmation(client, Some(line_b)));
        assert!(!shards.awaits_confirmation(client, Some(line_a)), "the same line keeps its order by itself");
        let got = shards.frame(line_a, push("ssubscribe", "a", ":1"), false);
        assert_eq!(got, LineFrame::ToClient { client, frame: push("ssubscribe", "a", ":1"), confirmed: true });
        shards.sent(line_b, Batch::of_client(vec![Bytes::from("b")], Instant::now()));
        // The node counts its own channels (1); the client is told the count over both lines.
        let got = shards.frame(line_b, push("ssubscribe", "b", ":1"), false);
        assert_eq!(got, LineFrame::ToClient { client, frame: push("ssubscribe", "b", ":2"), confirmed: true });
        let message = push("smessage", "b", "hello");
        assert_eq!(
            shards.frame(line_b, message.clone(), false),
            LineFrame::ToClient { client, frame: message, confirmed: false }
        );
        let (reply, sends) = shards.unsubscribe(client, &[b"b", b"never"], false);
        assert_eq!(reply, [push("sunsubscribe", "b", ":1"), push("sunsubscribe", "never", ":1")].concat());
        assert_eq!(sends, vec![(line_b, Request::from_args(&["SUNSUBSCRIBE", "b"]).frame().clone())]);
        // A message already on its way, and the server's answer to the proxy's SUNSUBSCRIBE: not the client's.
        assert_eq!(shards.frame(line_b, push("smessage", "b", "late"), false), LineFrame::Nothing);
        assert_eq!(shards.frame(line_b, push("sunsubscribe", "b", ":0"), false), LineFrame::Nothing);
        let (reply, _) = shards.unsubscribe(client, &[], true);
        assert_eq!(&reply[..], b">3\r\n$12\r\nsunsubscribe\r\n$1\r\na\r\n:0\r\n");
        let (reply, sends) = shards.unsubscribe(client, &[], false);
        assert_eq!(&reply[..], b"*3\r\n$12\r\nsunsubscribe\r\n$-1\r\n:0\r\n");
        assert!(sends.is_empty());
        assert_eq!(shards.forget(client).len(), 2);
        assert!(!shards.is_line(line_a) && !shards.is_line(line_b));
    }

    #[test]
    fn a_channel_the_node_drops_or_loses_is_placed_again_without_a_second_confirmation() {
        let [client, line, other] = ids(3)[..] else { unreachable!() };
        let mut shards = ShardSubscriptions::default();
        shards.add_line(client, server(0), line);
        shards.sent(line, Batch::of_client(vec![Bytes::from("{x}1"), Bytes::from("{x}2")], Instant::now()));
        assert!(matches!(shards.frame(line, push("ssubscribe", "{x}1", ":1"), false), LineFrame::ToClient { .. }));
        assert!(matches!(shards.frame(line, push("ssubscribe", "{x}2", ":2"), false), LineFrame::ToClient { .. }));
        // The slot moved away: the server drops both channels, one push each.
        assert_eq!(shards.frame(line, push("sunsubscribe", "{x}1", ":1"), false), LineFrame::Dropped);
        assert_eq!(shards.frame(line, push("sunsubscribe", "{x}2", ":0"), false), LineFrame::Dropped);
        let unplaced = shards.take_unplaced();
        assert_eq!(unplaced.len(), 1, "one SSUBSCRIBE for the slot: {unplaced:?}");
        let (owner, batch) = unplaced.into_iter().next().expect("a batch");
        assert_eq!((owner, batch.for_client, batch.channels.len()), (client, false, 2));
        assert_eq!(&batch.request()[..], &Request::from_args(&["SSUBSCRIBE", "{x}1", "{x}2"]).frame()[..]);
        shards.add_line(client, server(1), other);
        shards.sent(other, batch);
        assert_eq!(shards.frame(other, push("ssubscribe", "{x}1", ":1"), false), LineFrame::Nothing);
        // The client leaves one channel before the second confirmation: the proxy leaves it on the node too.
        let (_, sends) = shards.unsubscribe(client, &[b"{x}2"], false);
        assert!(sends.is_empty(), "not on a line yet");
        let leave = Request::from_args(&["SUNSUBSCRIBE", "{x}2"]).frame().clone();
        assert_eq!(shards.frame(other, push("ssubscribe", "{x}2", ":2"), false), LineFrame::Send(leave));
        // The node is lost: what it carried waits again, and is moved once a node confirms it.
        assert_eq!(shards.lost(other), Some((client, server(1))));
        let (_, batch) = shards.take_unplaced().pop().expect("the channel left waits");
        assert_eq!(batch.channels, vec![Bytes::from("{x}1")]);
        let third = ids(4)[3];
        shards.add_line(client, server(2), third);
        shards.sent(third, batch.clone());
        let moved = LineFrame::Moved { client, server: server(2), channels: 1 };
        assert_eq!(shards.frame(third, push("ssubscribe", "{x}1", ":1"), false), moved);
        // A batch redirected too often is given up, and the client told.
        assert_eq!(shards.give_up(client, &batch, false), push("sunsubscribe", "{x}1", ":0"));
        assert!(!shards.any_unplaced());
    }

    #[test]
    fn pubsub_frames_are_read_in_both_protocols() {
        assert_eq!(
            pubsub_frame(b">3\r\n$8\r\nsmessage\r\n$1\r\nc\r\n$1\r\nm\r\n"),
            Some((&b"smessage"[..], Some(&b"c"[..])))
        );
        assert_eq!(pubsub_frame(b"*3\r\n$12\r\nsunsubscribe\r\n_\r\n:0\r\n"), Some((&b"sunsubscribe"[..], None)));
        assert_eq!(pubsub_frame(b"+OK\r\n"), None);
        assert_eq!(pubsub_frame(b"*3\r\n$99\r\nshort\r\n"), None);
        assert_eq!(pubsub_frame(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"), None);
    }
}
