//! Cut-through forwarding of large replies: a bulk string (`$<len>`) of at least [`STREAM_MIN`] bytes, on its own
//! (not inside an aggregate), whose client is owed it next, goes to that client piece by piece as its bytes
//! arrive instead of being held whole. While a reply streams, the backend connection's bytes are all its own;
//! later replies on that connection are matched once its last byte is through.
//!
//! The pieces are split off the runtime's read buffer (`split_to` and `freeze`: never copied), so what the proxy
//! holds of a streamed value is what one read brought in plus what the client's socket has not taken yet. When
//! the client stops reading ([`crate::Input::WriteBlocked`]) the backend connection is not read until it drains.
//! Other clients' replies on that connection wait meanwhile, so the pause is bounded: after [`STREAM_STALL`]
//! without a drain the stream is no longer paced, and the rest of the value is read at full speed and queued for
//! the client (as a reply held whole would be), so the connection moves on.

use crate::conn::ConnId;
use bytes::{Bytes, BytesMut};
use std::time::{Duration, Instant};

/// Bulk replies with a body at least this long are streamed when their client is next in line. Smaller ones are
/// held whole: one frame, one write, and the reply path pays nothing for streaming.
pub(crate) const STREAM_MIN: usize = 64 * 1024;

/// How long a stream may keep its backend connection unread for a client that does not drain: the longest the
/// replies queued behind it on a shared connection wait for a client that stopped reading.
pub(crate) const STREAM_STALL: Duration = Duration::from_secs(1);

/// One reply being streamed from a backend connection to a client.
struct ReplyStream {
    backend: ConnId,
    client: ConnId,
    seq: u64,
    /// Bytes of the reply still to come: the rest of the body, then its CRLF.
    left: usize,
    /// Since when reading `backend` is stopped until `client` drains.
    paused_since: Option<Instant>,
    /// The client stayed blocked for [`STREAM_STALL`]: the rest is no longer paced by it.
    unpaced: bool,
}

/// What the bytes that arrived on a streaming backend connection are.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Piece {
    /// More of the reply for slot `seq` of `client`; more is to come.
    Part {
        /// The client.
        client: ConnId,
        /// Its reply slot.
        seq: u64,
        /// The bytes (never empty).
        data: Bytes,
    },
    /// The reply's last bytes, its CRLF included: the stream is over and the connection's front waiter is answered.
    Last {
        /// The bytes.
        data: Bytes,
        /// The connection was paused: reading it must resume.
        was_paused: bool,
    },
    /// The bytes where the reply's CRLF belongs are something else: the connection is out of step.
    BadTerminator,
}

/// The replies being streamed (a handful at most: one per backend connection, one per client).
#[derive(Default)]
pub(crate) struct Streams {
    active: Vec<ReplyStream>,
}

impl Streams {
    /// Whether no reply is being streamed (the check the reply path makes).
    pub(crate) fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// Streams the rest of a reply on `backend` (`left` bytes, CRLF included) to reply slot `seq` of `client`.
    pub(crate) fn start(&mut self, backend: ConnId, client: ConnId, seq: u64, left: usize) {
        self.active.push(ReplyStream { backend, client, seq, left, paused_since: None, unpaced: false });
    }

    /// Splits off `buf` what belongs to the reply streamed on `backend`; None when none is (or `buf` is empty).
    pub(crate) fn take(&mut self, backend: ConnId, buf: &mut BytesMut) -> Option<Piece> {
        let index = self.active.iter().position(|s| s.backend == backend)?;
        if buf.is_empty() {
            return None;
        }
        let stream = &mut self.active[index];
        let data = buf.split_to(buf.len().min(stream.left)).freeze();
        if !terminator_fits(&data, stream.left) {
            // Kept: the caller gives the connection up, and [`Streams::remove`] then names the client to close.
            return Some(Piece::BadTerminator);
        }
        stream.left -= data.len();
        if stream.left > 0 {
            return Some(Piece::Part { client: stream.client, seq: stream.seq, data });
        }
        let was_paused = self.active.swap_remove(index).paused_since.is_some();
        Some(Piece::Last { data, was_paused })
    }

    /// Stops (`blocked`) or resumes reading the connection streaming to `client`; returns that connection when
    /// its state changed (the caller tells the runtime).
    pub(crate) fn client_blocked(&mut self, now: Instant, client: ConnId, blocked: bool) -> Option<ConnId> {
        let stream =
            self.active.iter_mut().find(|s| s.client == client && !s.unpaced && s.paused_since.is_some() != blocked)?;
        stream.paused_since = blocked.then_some(now);
        Some(stream.backend)
    }

    /// When the first paused stream reaches [`STREAM_STALL`].
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.active.iter().filter_map(|s| s.paused_since).min().map(|since| since + STREAM_STALL)
    }

    /// Stops pacing the streams paused for [`STREAM_STALL`] by now; returns their connections, to resume.
    pub(crate) fn stalled(&mut self, now: Instant) -> Vec<ConnId> {
        let mut resumed = Vec::new();
        for stream in &mut self.active {
            if stream.paused_since.is_some_and(|since| now >= since + STREAM_STALL) {
                stream.paused_since = None;
                stream.unpaced = true;
                resumed.push(stream.backend);
            }
        }
        resumed
    }

    /// Forgets the stream on `backend` (the connection is gone); returns the client it went to.
    pub(crate) fn remove(&mut self, backend: ConnId) -> Option<ConnId> {
        let index = self.active.iter().position(|s| s.backend == backend)?;
        Some(self.active.swap_remove(index).client)
    }

    /// Forgets streams whose backend connection is gone, and resumes those paused for a client that is gone (the
    /// rest of its value is read and discarded); returns the connections to resume.
    pub(crate) fn tidy(
        &mut self,
        backend_open: impl Fn(ConnId) -> bool,
        client_open: impl Fn(ConnId) -> bool,
    ) -> Vec<ConnId> {
        self.active.retain(|s| backend_open(s.backend));
        let mut resumed = Vec::new();
        for stream in self.active.iter_mut().filter(|s| s.paused_since.is_some() && !client_open(s.client)) {
            stream.paused_since = None;
            resumed.push(stream.backend);
        }
        resumed
    }
}

/// Whether the bytes of `data` that fall on the reply's final CRLF are CR and LF; `left` is what the reply still
/// lacked before `data`.
fn terminator_fits(data: &[u8], left: usize) -> bool {
    data.iter().enumerate().skip(left.saturating_sub(2)).all(|(i, &byte)| match left - i {
        2 => byte == b'\r',
        _ => byte == b'\n',
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::client_and_backend_ids as ids;

    #[test]
    fn pieces_end_exactly_at_the_reply_and_check_its_crlf() {
        let (client, backend) = ids();
        let mut streams = Streams::default();
        streams.start(backend, client, 7, 5);
        let mut buf = BytesMut::from(&b"abc"[..]);
        let part = Piece::Part { client, seq: 7, data: Bytes::from_static(b"abc") };
        assert_eq!(streams.take(backend, &mut buf), Some(part));
        assert_eq!(streams.take(backend, &mut buf), None, "nothing arrived");
        buf.extend_from_slice(b"\r\n+OK\r\n");
        let last = Piece::Last { data: Bytes::from_static(b"\r\n"), was_paused: false };
        assert_eq!(streams.take(backend, &mut buf), Some(last));
        assert_eq!(&buf[..], b"+OK\r\n", "the next reply stays for the scanner");
        assert!(streams.is_empty());
    }

    #[test]
    fn a_wrong_terminator_split_anywhere_is_caught() {
        let (client, backend) = ids();
        for bad in [&b"ab\rX"[..], b"abX\n", b"abcd"] {
            for cut in 0..=bad.len() {
                let mut streams = Streams::default();
                streams.start(backend, client, 0, 4);
                let mut seen = Vec::new();
                for chunk in [&bad[..cut], &bad[cut..]] {
                    let mut buf = BytesMut::from(chunk);
                    seen.extend(streams.take(backend, &mut buf));
                }
                // The caller gives the connection up at the first BadTerminator.
                assert!(seen.contains(&Piece::BadTerminator), "{bad:?} cut at {cut}: {seen:?}");
                assert!(!seen.iter().any(|p| matches!(p, Piece::Last { .. })), "{bad:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn a_paused_stream_of_a_client_that_left_is_resumed_and_a_lost_backend_forgotten() {
        let (client, backend) = ids();
        let mut streams = Streams::default();
        streams.start(backend, client, 0, 10);
        let now = Instant::now();
        assert_eq!(streams.client_blocked(now, client, true), Some(backend));
        assert_eq!(streams.client_blocked(now, client, true), None, "already paused");
        assert_eq!(streams.tidy(|_| true, |_| true), []);
        assert_eq!(streams.tidy(|_| true, |_| false), [backend]);
        assert!(!streams.is_empty(), "the rest of the value is still read and discarded");
        assert_eq!(streams.tidy(|_| false, |_| false), []);
        assert!(streams.is_empty());
    }

    #[test]
    fn a_stream_paused_for_the_stall_bound_is_no_longer_paced() {
        let (client, backend) = ids();
        let mut streams = Streams::default();
        streams.start(backend, client, 0, 10);
        let now = Instant::now();
        assert_eq!(streams.deadline(), None);
        streams.client_blocked(now, client, true);
        assert_eq!(streams.deadline(), Some(now + STREAM_STALL));
        assert_eq!(streams.stalled(now + STREAM_STALL - Duration::from_millis(1)), []);
        assert_eq!(streams.stalled(now + STREAM_STALL), [backend]);
        assert_eq!(streams.deadline(), None);
        assert_eq!(streams.client_blocked(now, client, true), None, "not paused again");
    }
}
