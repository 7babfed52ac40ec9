//! `SCAN` over a whole cluster: one primary after another, in slot order. The cursor the client holds is still
//! one integer, so clients and `redis-cli --scan` work unchanged: its low bits say which primary, the next bits
//! which version of the slot map the walk follows, the high bits where in that primary's keyspace it is. A walk
//! whose map changed (a reshard moved slots, a failover replaced a primary) starts again from the first primary:
//! it may repeat keys, never miss one.

use crate::resp::{self, Request};
use bytes::{Bytes, BytesMut};

/// Bits of the cursor that name the primary (up to 1,024 shards).
const SHARD_BITS: u32 = 10;
/// Bits of the cursor that name the map version the walk follows.
const VERSION_BITS: u32 = 10;
const LOW_BITS: u32 = SHARD_BITS + VERSION_BITS;

/// Where a walk is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Position {
    /// The primary, by its place in slot order.
    pub(crate) shard: usize,
    /// The map version the walk follows (modulo 1,024).
    pub(crate) version: u16,
    /// The cursor on that primary.
    pub(crate) cursor: u64,
}

impl Position {
    /// The walk's position the client's `cursor` says (0: a new walk, on `version`).
    pub(crate) fn decode(cursor: u64, version: u16) -> Position {
        if cursor == 0 {
            return Position { shard: 0, version: version % (1 << VERSION_BITS), cursor: 0 };
        }
        Position {
            shard: (cursor & ((1 << SHARD_BITS) - 1)) as usize,
            version: ((cursor >> SHARD_BITS) & ((1 << VERSION_BITS) - 1)) as u16,
            cursor: cursor >> LOW_BITS,
        }
    }

    /// The cursor the client gets for this position; None when the primary's cursor is too large to fit (a
    /// keyspace of more than 2^44 buckets).
    pub(crate) fn encode(self) -> Option<u64> {
        if self.cursor >> (64 - LOW_BITS) != 0 || self.shard >= 1 << SHARD_BITS {
            return None;
        }
        Some((self.cursor << LOW_BITS) | (u64::from(self.version) << SHARD_BITS) | self.shard as u64)
    }

    /// Whether the walk follows the map version `version`.
    pub(crate) fn follows(self, version: u16) -> bool {
        self.version == version % (1 << VERSION_BITS)
    }
}

/// The cursor of a `SCAN` request (None: not a number; the server answers that with its own error).
pub(crate) fn cursor_of(request: &Request) -> Option<u64> {
    std::str::from_utf8(request.arg(1)?).ok()?.parse().ok()
}

/// `request`, a `SCAN`, with its cursor replaced by `cursor` (its other options kept).
pub(crate) fn with_cursor(request: &Request, cursor: u64) -> Request {
    let cursor = cursor.to_string();
    let args: Vec<&[u8]> =
        request.args().enumerate().map(|(at, arg)| if at == 1 { cursor.as_bytes() } else { arg }).collect();
    Request::from_args(&args)
}

/// A primary's `SCAN` reply: its next cursor and the frame of its keys; None when it is not one (an error).
pub(crate) fn split_reply(frame: &[u8]) -> Option<(u64, &[u8])> {
    let rest = frame.strip_prefix(b"*2\r\n")?;
    let rest = rest.strip_prefix(b"$")?;
    let line_end = memchr::memchr(b'\r', rest)?;
    let len: usize = std::str::from_utf8(&rest[..line_end]).ok()?.parse().ok()?;
    let cursor_at = line_end + 2;
    let cursor = std::str::from_utf8(rest.get(cursor_at..cursor_at + len)?).ok()?.parse().ok()?;
    let keys = rest.get(cursor_at + len + 2..)?;
    keys.first().filter(|b| **b == b'*').map(|_| (cursor, keys))
}

/// The client's reply: `cursor` and the keys frame as the primary sent it.
pub(crate) fn reply(cursor: u64, keys: &[u8]) -> Bytes {
    let cursor = cursor.to_string();
    let mut out = BytesMut::with_capacity(16 + cursor.len() + keys.len());
    out.extend_from_slice(b"*2\r\n");
    out.extend_from_slice(&resp::bulk_reply(cursor.as_bytes()));
    out.extend_from_slice(keys);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        let position = Position { shard: 2, version: 7, cursor: 123_456 };
        let cursor = position.encode().expect("fits");
        assert_eq!(Position::decode(cursor, 0), position);
        assert_eq!(Position::decode(0, 1030), Position { shard: 0, version: 6, cursor: 0 });
        assert!(Position::decode(0, 1030).follows(6));
        assert_eq!(Position { shard: 0, version: 0, cursor: 1 << 50 }.encode(), None);
        // A cursor ending a primary's walk on shard 0, version 0, is not 0: the walk goes on.
        assert_ne!(Position { shard: 1, version: 0, cursor: 0 }.encode(), Some(0));
    }

    #[test]
    fn replies_are_taken_apart_and_made() {
        let frame = b"*2\r\n$2\r\n17\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n";
        let (next, keys) = split_reply(frame).expect("a SCAN reply");
        assert_eq!((next, keys), (17, &b"*2\r\n$1\r\na\r\n$1\r\nb\r\n"[..]));
        assert_eq!(&reply(99, keys)[..], b"*2\r\n$2\r\n99\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n");
        assert_eq!(split_reply(b"-ERR invalid cursor\r\n"), None);
        let request = Request::from_args(&["SCAN", "55", "MATCH", "k*"]);
        assert_eq!(cursor_of(&request), Some(55));
        let rewritten = with_cursor(&request, 3);
        assert_eq!(rewritten.frame(), Request::from_args(&["SCAN", "3", "MATCH", "k*"]).frame());
    }
}
