//! Server replies: the resumable [`ReplyScanner`] for any RESP2 or RESP3 frame, nested aggregates included.

use super::{find_line_end, parse_int, Limits, ProtocolError};
use crate::stream::STREAM_MIN;
use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

/// Resumable scanner for replies from a server: any RESP2 or RESP3 frame, nested aggregates included.
///
/// It keeps an explicit stack of open aggregates (never recursion), so nesting is bounded by memory only.
#[derive(Debug)]
pub(crate) struct ReplyScanner {
    limits: Limits,
    pos: usize,
    /// Elements still expected at each open aggregate level.
    open: SmallVec<[usize; 8]>,
    bulk_len: Option<usize>,
}

impl ReplyScanner {
    /// A scanner enforcing `limits`.
    pub(crate) fn new(limits: Limits) -> ReplyScanner {
        ReplyScanner { limits, pos: 0, open: SmallVec::new(), bulk_len: None }
    }

    /// Splits the next complete reply off the front of `buf`; `Ok(None)` means more bytes are needed.
    pub(crate) fn next_reply(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, ProtocolError> {
        loop {
            if let Some(len) = self.bulk_len {
                if buf.len() < self.pos + len + 2 {
                    // A large bulk reply on its own may be streamed: the caller decides, and reserves room for
                    // the whole of it only if it holds it (`reserve_rest`).
                    if len < STREAM_MIN || !self.open.is_empty() || buf.first() != Some(&b'$') {
                        buf.reserve(self.pos + len + 2 - buf.len());
                    }
                    return Ok(None);
                }
                if &buf[self.pos + len..self.pos + len + 2] != b"\r\n" {
                    return Err(ProtocolError::MissingBulkTerminator);
                }
                self.pos += len + 2;
                self.bulk_len = None;
                if self.finish_element() {
                    return Ok(Some(self.take(buf)));
                }
                continue;
            }
            let Some(&kind) = buf.get(self.pos) else { return Ok(None) };
            // A line (type byte and body, without CRLF) may be at most `max_inline_len` long. The bound is the
            // same whether the line is complete or not, so a reply is accepted or refused the same way however
            // its bytes are split into reads. An unterminated line is only known to be too long once it holds
            // more than the bound plus one byte, as that byte may be the CR of a line exactly at the bound.
            let Some(cr) = find_line_end(buf, self.pos) else {
                if buf.len() - self.pos > self.limits.max_inline_len + 1 {
                    return Err(ProtocolError::InvalidLength);
                }
                return Ok(None);
            };
            if cr - self.pos > self.limits.max_inline_len {
                return Err(ProtocolError::InvalidLength);
            }
            if cr == self.pos {
                // An empty line (a bare CRLF): there is no type byte, and no body to slice after it.
                return Err(ProtocolError::UnknownType(kind));
            }
            let body = &buf[self.pos + 1..cr];
            self.pos = cr + 2;
            match kind {
                b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {
                    if self.finish_element() {
                        return Ok(Some(self.take(buf)));
                    }
                }
                b'$' | b'!' | b'=' => {
                    let len = parse_int(body).ok_or(ProtocolError::InvalidLength)?;
                    if len < 0 {
                        if self.finish_element() {
                            return Ok(Some(self.take(buf)));
                        }
                    } else if len as u64 > self.limits.max_bulk_len as u64 {
                        return Err(ProtocolError::InvalidBulkLength);
                    } else {
                        self.bulk_len = Some(len as usize);
                    }
                }
                b'*' | b'>' | b'~' | b'%' | b'|' => {
                    let count = parse_int(body).ok_or(ProtocolError::InvalidLength)?;
                    let per_entry = if kind == b'%' || kind == b'|' { 2 } else { 1 };
                    if count <= 0 {
                        if self.finish_element() {
                            return Ok(Some(self.take(buf)));
                        }
                    } else if count as u64 > self.limits.max_multibulk_len as u64 {
                        return Err(ProtocolError::InvalidMultibulkLength);
                    } else {
                        // No depth limit: replies are trusted input, and a Lua script may return a table nested
                        // thousands deep. Each level takes at least 4 buffered bytes, so the stack of open
                        // levels stays a fraction of the reply's own size.
                        self.open.push(count as usize * per_entry);
                    }
                }
                other => return Err(ProtocolError::UnknownType(other)),
            }
        }
    }

    /// The whole length (header, body, CRLF) of the bulk string reply (`$`) of at least [`STREAM_MIN`] bytes that
    /// `buf` holds the start of, on its own (not inside an aggregate) and not yet complete: a reply that may be
    /// streamed.
    pub(crate) fn partial_large_bulk(&self, buf: &[u8]) -> Option<usize> {
        let len = self.bulk_len.filter(|len| *len >= STREAM_MIN && self.open.is_empty())?;
        let whole = self.pos + len + 2;
        (buf.first() == Some(&b'$') && buf.len() < whole).then_some(whole)
    }

    /// Reserves room in `buf` for the rest of the reply [`ReplyScanner::partial_large_bulk`] found, which is held
    /// whole after all.
    pub(crate) fn reserve_rest(&self, buf: &mut BytesMut) {
        if let Some(whole) = self.partial_large_bulk(buf) {
            buf.reserve(whole - buf.len());
        }
    }

    /// Forgets the reply in progress: a stream took its bytes and takes the rest as they come.
    pub(crate) fn stream_taken(&mut self) {
        self.pos = 0;
        self.bulk_len = None;
    }

    /// Counts one finished element against the open aggregates; true when the whole frame is complete.
    fn finish_element(&mut self) -> bool {
        while let Some(top) = self.open.last_mut() {
            *top -= 1;
            if *top > 0 {
                return false;
            }
            self.open.pop();
        }
        true
    }

    fn take(&mut self, buf: &mut BytesMut) -> Bytes {
        let frame = buf.split_to(self.pos).freeze();
        self.pos = 0;
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reply_scanner_handles_resp3_and_nesting() {
        let input: &[u8] =
            b"+OK\r\n$-1\r\n*2\r\n*1\r\n:1\r\n$3\r\nabc\r\n%1\r\n+k\r\n#t\r\n>2\r\n+a\r\n+b\r\n_\r\n,1.5\r\n";
        let mut scanner = ReplyScanner::new(Limits::default());
        let mut buf = BytesMut::from(input);
        let mut frames = Vec::new();
        while let Some(f) = scanner.next_reply(&mut buf).unwrap() {
            frames.push(f);
        }
        assert_eq!(frames.len(), 7);
        assert_eq!(&frames[2][..], b"*2\r\n*1\r\n:1\r\n$3\r\nabc\r\n");
    }

    #[test]
    fn deeply_nested_reply_is_one_frame() {
        // A Lua script can return a table nested this deep; the server's replies have no depth limit.
        let depth = 100_000;
        let mut input = b"*1\r\n".repeat(depth);
        input.extend_from_slice(b":1\r\n+OK\r\n");
        let mut scanner = ReplyScanner::new(Limits::default());
        let mut buf = BytesMut::from(&input[..]);
        let frame = scanner.next_reply(&mut buf).unwrap().expect("one complete frame");
        assert_eq!(frame.len(), depth * 4 + 4);
        assert_eq!(scanner.next_reply(&mut buf).unwrap().as_deref(), Some(&b"+OK\r\n"[..]));
    }

    #[test]
    fn long_reply_line_is_refused_however_it_is_split() {
        let limits = Limits { max_inline_len: 8, ..Limits::default() };
        let scan = |chunks: &[&[u8]]| {
            let mut scanner = ReplyScanner::new(limits);
            let mut buf = BytesMut::new();
            let mut result = Ok(None);
            for chunk in chunks {
                buf.extend_from_slice(chunk);
                result = scanner.next_reply(&mut buf);
            }
            result
        };
        // Found by the resp_reply fuzz target: whole, the line was accepted; split, it was refused.
        assert_eq!(scan(&[b"+123456789\r\n"]), Err(ProtocolError::InvalidLength));
        assert_eq!(scan(&[b"+12345", b"6789\r\n"]), Err(ProtocolError::InvalidLength));
        // A line exactly at the bound passes, also when its CR and LF arrive apart.
        assert_eq!(scan(&[b"+1234567\r", b"\n"]), Ok(Some(Bytes::from_static(b"+1234567\r\n"))));
    }

    #[test]
    fn empty_reply_line_is_an_error_not_a_panic() {
        // Found by the resp_reply fuzz target: a bare CRLF sliced buf[pos + 1..pos] and panicked.
        for input in [&b"\r\n"[..], b"+OK\r\n\r\n", b"*2\r\n:1\r\n\r\n"] {
            let mut scanner = ReplyScanner::new(Limits::default());
            let mut buf = BytesMut::from(input);
            let mut result = scanner.next_reply(&mut buf);
            while let Ok(Some(_)) = result {
                result = scanner.next_reply(&mut buf);
            }
            assert_eq!(result, Err(ProtocolError::UnknownType(b'\r')));
        }
    }

    #[test]
    fn only_a_large_partial_bulk_string_on_its_own_may_be_streamed() {
        let partial = |input: &[u8]| {
            let mut scanner = ReplyScanner::new(Limits::default());
            let mut buf = BytesMut::from(input);
            assert_eq!(scanner.next_reply(&mut buf), Ok(None));
            scanner.partial_large_bulk(&buf)
        };
        let header = format!("${STREAM_MIN}\r\n");
        assert_eq!(partial(format!("{header}abc").as_bytes()), Some(header.len() + STREAM_MIN + 2));
        assert_eq!(partial(format!("*1\r\n{header}abc").as_bytes()), None, "inside an array");
        assert_eq!(partial(format!("!{STREAM_MIN}\r\nabc").as_bytes()), None, "a blob error");
        assert_eq!(partial(format!("${}\r\nabc", STREAM_MIN - 1).as_bytes()), None, "small");

        // Taken by a stream: the scanner starts afresh at the next reply.
        let mut scanner = ReplyScanner::new(Limits::default());
        let mut buf = BytesMut::from(format!("{header}abc").as_bytes());
        assert_eq!(scanner.next_reply(&mut buf), Ok(None));
        scanner.stream_taken();
        buf.clear();
        buf.extend_from_slice(b"+OK\r\n");
        assert_eq!(scanner.next_reply(&mut buf), Ok(Some(Bytes::from_static(b"+OK\r\n"))));
    }

    fn arb_reply(depth: u32) -> BoxedStrategy<Vec<u8>> {
        let leaf = prop_oneof![
            "[a-zA-Z0-9 ]{0,12}".prop_map(|s| format!("+{s}\r\n").into_bytes()),
            "[a-zA-Z0-9 ]{0,12}".prop_map(|s| format!("-ERR {s}\r\n").into_bytes()),
            any::<i64>().prop_map(|i| format!(":{i}\r\n").into_bytes()),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(|v| {
                let mut out = format!("${}\r\n", v.len()).into_bytes();
                out.extend_from_slice(&v);
                out.extend_from_slice(b"\r\n");
                out
            }),
            Just(b"$-1\r\n".to_vec()),
            Just(b"_\r\n".to_vec()),
        ];
        if depth == 0 {
            return leaf.boxed();
        }
        prop_oneof![
            3 => leaf,
            1 => (proptest::sample::select(vec![b'*', b'>', b'~']), proptest::collection::vec(arb_reply(depth - 1), 0..4))
                .prop_map(|(kind, items)| {
                    let mut out = vec![kind];
                    out.extend_from_slice(format!("{}\r\n", items.len()).as_bytes());
                    for item in items {
                        out.extend_from_slice(&item);
                    }
                    out
                }),
        ]
        .boxed()
    }

    proptest! {
        #[test]
        fn any_split_of_replies_yields_the_same_frames(
            replies in proptest::collection::vec(arb_reply(3), 1..6),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let stream: Vec<u8> = replies.concat();
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
            points.sort_unstable();
            points.push(stream.len());
            let mut scanner = ReplyScanner::new(Limits::default());
            let mut buf = BytesMut::new();
            let mut frames = Vec::new();
            let mut last = 0;
            for p in points {
                buf.extend_from_slice(&stream[last..p]);
                last = p;
                while let Some(f) = scanner.next_reply(&mut buf).unwrap() {
                    frames.push(f.to_vec());
                }
            }
            prop_assert_eq!(frames, replies);
        }
    }
}
