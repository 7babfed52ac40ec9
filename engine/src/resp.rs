//! Streaming RESP2/RESP3: the client [`Limits`], the [`ProtocolError`]s that break them, and the line helpers both
//! scanners share.
//!
//! Both scanners split complete frames off the caller's [`BytesMut`](bytes::BytesMut) as
//! [`Bytes`](bytes::Bytes) (zero-copy) and keep a resume cursor between calls, so a large value that arrives in
//! many reads is scanned once, in linear time. Every length is bounded by [`Limits`]; exceeding one is a
//! [`ProtocolError`] worded as Redis words it.
//!
//! | module | holds |
//! |---|---|
//! | `request` | [`Request`] and the [`RequestScanner`] for what clients send |
//! | `inline` | the inline command syntax (`sdssplitargs`) |
//! | `reply` | the [`ReplyScanner`] for what servers send |
//! | `encode` | the encoders for headers and replies the proxy writes itself |

mod encode;
mod inline;
mod reply;
mod request;

pub(crate) use encode::{bulk_reply, error_reply, simple_reply};
pub(crate) use reply::ReplyScanner;
pub(crate) use request::{PendingLastArg, Request, RequestScanner};
use std::fmt;

/// Bounds on what a peer may send, as Redis enforces them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest bulk string accepted (Redis: `proto-max-bulk-len`, 512 MiB).
    pub max_bulk_len: usize,
    /// Most elements in one multibulk or aggregate (Redis accepts up to `i32::MAX`).
    pub max_multibulk_len: usize,
    /// Longest inline command or header line (Redis: 64 KiB).
    pub max_inline_len: usize,
    /// Largest whole request (Redis: `client-query-buffer-limit`, 1 GiB).
    pub max_request_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk_len: 512 * 1024 * 1024,
            max_multibulk_len: i32::MAX as usize,
            max_inline_len: 64 * 1024,
            max_request_len: 1024 * 1024 * 1024,
        }
    }
}

/// A protocol violation; its `Display` is the text Redis sends after `-ERR `.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ProtocolError {
    /// A multibulk count that is not a number or out of range.
    InvalidMultibulkLength,
    /// A bulk length that is not a number or out of range.
    InvalidBulkLength,
    /// A request element that is not a bulk string.
    ExpectedBulk(u8),
    /// A multibulk count line longer than the inline limit.
    TooBigMultibulkCount,
    /// A bulk length line longer than the inline limit.
    TooBigBulkCount,
    /// An inline request longer than the inline limit.
    TooBigInlineRequest,
    /// An inline request with unbalanced quotes.
    UnbalancedQuotes,
    /// A bulk string not followed by CRLF.
    MissingBulkTerminator,
    /// A request larger than the query buffer limit.
    RequestTooBig,
    /// A reply line with an unknown type byte.
    UnknownType(u8),
    /// A reply line that should hold a number and does not.
    InvalidLength,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::InvalidMultibulkLength => f.write_str("Protocol error: invalid multibulk length"),
            ProtocolError::InvalidBulkLength => f.write_str("Protocol error: invalid bulk length"),
            ProtocolError::ExpectedBulk(got) => {
                write!(f, "Protocol error: expected '$', got '{}'", char::from(*got).escape_default())
            }
            ProtocolError::TooBigMultibulkCount => f.write_str("Protocol error: too big mbulk count string"),
            ProtocolError::TooBigBulkCount => f.write_str("Protocol error: too big bulk count string"),
            ProtocolError::TooBigInlineRequest => f.write_str("Protocol error: too big inline request"),
            ProtocolError::UnbalancedQuotes => f.write_str("Protocol error: unbalanced quotes in request"),
            ProtocolError::MissingBulkTerminator => f.write_str("Protocol error: bulk string not terminated by CRLF"),
            ProtocolError::RequestTooBig => f.write_str("Protocol error: request exceeds the query buffer limit"),
            ProtocolError::UnknownType(t) => {
                write!(f, "Protocol error: unknown reply type '{}'", char::from(*t).escape_default())
            }
            ProtocolError::InvalidLength => f.write_str("Protocol error: invalid length in reply"),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// Finds the CRLF-terminated line starting at `from`; returns the index of its `\r`.
fn find_line_end(buf: &[u8], from: usize) -> Option<usize> {
    // Header lines are a few bytes long: a plain loop finds their end before memchr's set-up would.
    let short_end = buf.len().min(from + 16);
    let mut at = from;
    while at < short_end {
        if buf[at] == b'\r' {
            match buf.get(at + 1) {
                Some(b'\n') => return Some(at),
                Some(_) => {}
                None => return None,
            }
        }
        at += 1;
    }
    loop {
        let cr = at + memchr::memchr(b'\r', &buf[at..])?;
        match buf.get(cr + 1) {
            Some(b'\n') => return Some(cr),
            Some(_) => at = cr + 1,
            None => return None,
        }
    }
}

/// Parses a decimal integer the way Redis's `string2ll` does (optional '-', digits only, no overflow).
fn parse_int(digits: &[u8]) -> Option<i64> {
    let (negative, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut value: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut requests = RequestScanner::new(Limits { max_inline_len: 64, ..Limits::default() });
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = requests.next_request(&mut buf) {}
            let mut replies = ReplyScanner::new(Limits { max_inline_len: 64, ..Limits::default() });
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = replies.next_reply(&mut buf) {}
        }
    }
}
