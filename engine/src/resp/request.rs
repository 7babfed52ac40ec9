//! Client requests: [`Request`] (a frame and where its arguments lie) and the resumable [`RequestScanner`] for
//! RESP multibulks and inline commands.

use super::encode::{put_array_header, put_bulk_header};
use super::inline::split_inline_args;
use super::{find_line_end, parse_int, Limits, ProtocolError};
use crate::upload::UPLOAD_MIN;
use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

/// Reads `<digits>\r\n` at `at` when it is a plain number of at most 9 digits; returns it and where the next line
/// starts. Anything else (a sign, more digits, a missing CRLF, the end of the buffer) is None.
// Inlined: it runs for every argument of every request, and the call cost ~40 instructions per GET round trip
// (bench/instructions.sh).
#[inline(always)]
fn small_number_line(buf: &[u8], at: usize) -> Option<(usize, usize)> {
    let mut value = 0usize;
    let mut pos = at;
    loop {
        let byte = *buf.get(pos)?;
        if byte.is_ascii_digit() {
            if pos - at == 9 {
                return None;
            }
            value = value * 10 + usize::from(byte - b'0');
            pos += 1;
        } else if byte == b'\r' && pos > at && buf.get(pos + 1) == Some(&b'\n') {
            return Some((value, pos + 2));
        } else {
            return None;
        }
    }
}

/// One client request: the frame as received (multibulk form) and where each argument lies in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Request {
    frame: Bytes,
    args: SmallVec<[(u32, u32); 5]>,
}

impl Request {
    /// Builds a request from arguments, encoding it as a RESP multibulk.
    pub(crate) fn from_args<A: AsRef<[u8]>>(args: &[A]) -> Request {
        let mut out = BytesMut::new();
        let mut ranges = SmallVec::new();
        put_array_header(&mut out, args.len());
        for arg in args {
            let arg = arg.as_ref();
            put_bulk_header(&mut out, arg.len());
            ranges.push((out.len() as u32, (out.len() + arg.len()) as u32));
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        Request { frame: out.freeze(), args: ranges }
    }

    /// The start of a request whose last argument's body is still to come: `frame` holds everything up to that
    /// body, and `args` where the arguments before it lie.
    pub(crate) fn from_head(frame: Bytes, args: &[(u32, u32)]) -> Request {
        Request { frame, args: SmallVec::from_slice(args) }
    }

    /// The request's bytes in RESP multibulk form, ready to forward.
    pub(crate) fn frame(&self) -> &Bytes {
        &self.frame
    }

    /// How many arguments, counting the command name.
    pub(crate) fn arg_count(&self) -> usize {
        self.args.len()
    }

    /// Argument `index` (0 is the command name), if present.
    pub(crate) fn arg(&self, index: usize) -> Option<&[u8]> {
        self.args.get(index).map(|&(start, end)| &self.frame[start as usize..end as usize])
    }

    /// Every argument in order.
    pub(crate) fn args(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.args.iter().map(|&(start, end)| &self.frame[start as usize..end as usize])
    }

    /// Whether the request has no arguments at all (an empty line or `*0`): Redis ignores those.
    pub(crate) fn is_empty(&self) -> bool {
        self.args.is_empty()
    }
}

/// A request whose last argument's body is still to come (see [`RequestScanner::pending_last_arg`]).
pub(crate) struct PendingLastArg<'a> {
    /// How long its head is: everything up to that body.
    pub(crate) head_len: usize,
    /// How long the body is (its CRLF not counted).
    pub(crate) body_len: usize,
    /// Where the head's arguments lie in it.
    pub(crate) args: &'a [(u32, u32)],
}

/// Resumable scanner for client requests: RESP multibulks of bulk strings, or inline commands.
#[derive(Debug)]
pub(crate) struct RequestScanner {
    limits: Limits,
    /// Bytes of the buffer already validated for the request in progress.
    pos: usize,
    /// Bulk strings still expected in the multibulk in progress (None: no multibulk started).
    remaining: Option<usize>,
    /// Length of the bulk string whose header was read and whose body is awaited.
    bulk_len: Option<usize>,
    args: SmallVec<[(u32, u32); 5]>,
}

impl RequestScanner {
    /// A scanner enforcing `limits`.
    pub(crate) fn new(limits: Limits) -> RequestScanner {
        RequestScanner { limits, pos: 0, remaining: None, bulk_len: None, args: SmallVec::new() }
    }

    /// Bytes of a partial request already buffered and validated (how far a resumed scan starts).
    #[cfg(test)]
    pub(crate) fn partial_len(&self) -> usize {
        self.pos
    }

    /// Splits the next complete request off the front of `buf`; `Ok(None)` means more bytes are needed.
    ///
    /// After an error the connection must be closed: the stream is out of step.
    pub(crate) fn next_request(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
        if self.remaining.is_none() {
            if let Some(len) = self.scan_complete_small(buf) {
                let frame = buf.split_to(len).freeze();
                return Ok(Some(Request { frame, args: std::mem::take(&mut self.args) }));
            }
            let Some(&first) = buf.first() else { return Ok(None) };
            if first != b'*' {
                return self.next_inline(buf);
            }
            // Header lines are bounded alike complete or not (see `ReplyScanner::next_reply`), so the error a
            // client gets does not depend on how its bytes were split into reads.
            let Some(cr) = find_line_end(buf, 0) else {
                if buf.len() > self.limits.max_inline_len + 1 {
                    return Err(ProtocolError::TooBigMultibulkCount);
                }
                return Ok(None);
            };
            if cr > self.limits.max_inline_len {
                return Err(ProtocolError::TooBigMultibulkCount);
            }
            let count = parse_int(&buf[1..cr]).ok_or(ProtocolError::InvalidMultibulkLength)?;
            if count > self.limits.max_multibulk_len as i64 {
                return Err(ProtocolError::InvalidMultibulkLength);
            }
            self.pos = cr + 2;
            if count <= 0 {
                // Redis ignores `*0` and `*-1` requests.
                let _ = buf.split_to(self.pos);
                self.pos = 0;
                return Ok(Some(Request { frame: Bytes::new(), args: SmallVec::new() }));
            }
            self.remaining = Some(count as usize);
            self.args.clear();
        }
        // Work on locals and store them back only when the request is incomplete: this loop runs for every
        // argument of every request.
        let mut remaining = self.remaining.unwrap_or(0);
        let mut pos = self.pos;
        let mut pending_len = self.bulk_len.take();
        while remaining > 0 {
            let len = match pending_len.take() {
                Some(len) => len,
                None => {
                    let Some(&kind) = buf.get(pos) else {
                        self.suspend(pos, remaining, None);
                        return Ok(None);
                    };
                    if kind != b'$' {
                        return Err(ProtocolError::ExpectedBulk(kind));
                    }
                    let Some(cr) = find_line_end(buf, pos) else {
                        if buf.len() - pos > self.limits.max_inline_len + 1 {
                            return Err(ProtocolError::TooBigBulkCount);
                        }
                        self.suspend(pos, remaining, None);
                        return Ok(None);
                    };
                    if cr - pos > self.limits.max_inline_len {
                        return Err(ProtocolError::TooBigBulkCount);
                    }
                    let len = parse_int(&buf[pos + 1..cr]).ok_or(ProtocolError::InvalidBulkLength)?;
                    if len < 0 || len as u64 > self.limits.max_bulk_len as u64 {
                        return Err(ProtocolError::InvalidBulkLength);
                    }
                    if cr + 4 + len as usize > self.max_request_len() {
                        return Err(ProtocolError::RequestTooBig);
                    }
                    pos = cr + 2;
                    len as usize
                }
            };
            if buf.len() < pos + len + 2 {
                // Reserve for the whole value at once so a large value is not copied on every regrowth; not for
                // one the engine may upload piece by piece, which would never fill that room.
                if remaining > 1 || len < UPLOAD_MIN {
                    buf.reserve(pos + len + 2 - buf.len());
                }
                self.suspend(pos, remaining, Some(len));
                return Ok(None);
            }
            if &buf[pos + len..pos + len + 2] != b"\r\n" {
                return Err(ProtocolError::MissingBulkTerminator);
            }
            // Positions fit in u32: `max_request_len` is capped below 4 GiB.
            self.args.push((pos as u32, (pos + len) as u32));
            pos += len + 2;
            remaining -= 1;
        }
        let frame = buf.split_to(pos).freeze();
        self.pos = 0;
        self.remaining = None;
        let args = std::mem::take(&mut self.args);
        Ok(Some(Request { frame, args }))
    }

    /// The common case in one pass: a complete, well-formed multibulk at the front of `buf` with small lengths.
    /// Returns its length with `self.args` filled, or None (args cleared) for anything else, which the general
    /// path then scans from the start with every check and error of its own.
    fn scan_complete_small(&mut self, buf: &[u8]) -> Option<usize> {
        self.args.clear();
        let found = self.scan_small_into_args(buf);
        if found.is_none() {
            self.args.clear();
        }
        found
    }

    fn scan_small_into_args(&mut self, buf: &[u8]) -> Option<usize> {
        if buf.first() != Some(&b'*') {
            return None;
        }
        let (count, mut pos) = small_number_line(buf, 1)?;
        if count == 0 || count > self.limits.max_multibulk_len {
            return None;
        }
        for _ in 0..count {
            if buf.get(pos) != Some(&b'$') {
                return None;
            }
            let (len, start) = small_number_line(buf, pos + 1)?;
            let end = start + len;
            if len > self.limits.max_bulk_len || buf.get(end..end + 2) != Some(b"\r\n") {
                return None;
            }
            pos = end + 2;
            if pos > self.max_request_len() {
                return None;
            }
            self.args.push((start as u32, end as u32));
        }
        Some(pos)
    }

    /// The request in progress when all of it is here but the body of its last argument; None otherwise.
    pub(crate) fn pending_last_arg(&self) -> Option<PendingLastArg<'_>> {
        match (self.remaining, self.bulk_len) {
            (Some(1), Some(body_len)) => Some(PendingLastArg { head_len: self.pos, body_len, args: &self.args }),
            _ => None,
        }
    }

    /// Forgets the request in progress: its head went on, and its body follows outside the scanner.
    pub(crate) fn restart(&mut self) {
        self.pos = 0;
        self.remaining = None;
        self.bulk_len = None;
        self.args.clear();
    }

    /// Remembers where an incomplete request stands, to resume from there when more bytes arrive.
    fn suspend(&mut self, pos: usize, remaining: usize, bulk_len: Option<usize>) {
        self.pos = pos;
        self.remaining = Some(remaining);
        self.bulk_len = bulk_len;
    }

    /// The request size limit, capped so that argument positions fit in `u32`.
    fn max_request_len(&self) -> usize {
        self.limits.max_request_len.min(u32::MAX as usize)
    }

    /// Parses an inline command (as telnet and `redis-cli` send them) and re-encodes it as a multibulk.
    fn next_inline(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
        let Some(newline) = memchr::memchr(b'\n', buf) else {
            if buf.len() > self.limits.max_inline_len {
                return Err(ProtocolError::TooBigInlineRequest);
            }
            return Ok(None);
        };
        if newline > self.limits.max_inline_len {
            return Err(ProtocolError::TooBigInlineRequest);
        }
        let line = buf.split_to(newline + 1);
        let mut text = &line[..newline];
        if let [rest @ .., b'\r'] = text {
            text = rest;
        }
        let args = split_inline_args(text)?;
        Ok(Some(Request::from_args(&args)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scan_requests(chunks: &[&[u8]]) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        let mut scanner = RequestScanner::new(Limits::default());
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some(req) = scanner.next_request(&mut buf)? {
                out.push(req.args().map(<[u8]>::to_vec).collect());
            }
        }
        Ok(out)
    }

    #[test]
    fn multibulk_and_inline_requests() {
        let got = scan_requests(&[b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\nset a \"b c\"\r\n"]).unwrap();
        assert_eq!(
            got,
            vec![
                vec![b"GET".to_vec(), b"k".to_vec()],
                vec![b"PING".to_vec()],
                vec![b"set".to_vec(), b"a".to_vec(), b"b c".to_vec()]
            ]
        );
    }

    #[test]
    fn protocol_errors_match_redis_wording() {
        let err = |input: &[u8]| scan_requests(&[input]).unwrap_err().to_string();
        assert_eq!(err(b"*1\r\n$2147483648\r\n"), "Protocol error: invalid bulk length");
        assert_eq!(err(b"*x\r\n"), "Protocol error: invalid multibulk length");
        assert_eq!(err(b"*1\r\n:1\r\n"), "Protocol error: expected '$', got ':'");
        assert_eq!(err(b"set a \"b\r\n"), "Protocol error: unbalanced quotes in request");
        assert_eq!(err(&vec![b'a'; 70 * 1024]), "Protocol error: too big inline request");
    }

    #[test]
    fn long_header_line_gets_one_error_however_it_is_split() {
        let limits = Limits { max_inline_len: 24, ..Limits::default() };
        let scan = |chunks: &[&[u8]]| {
            let mut scanner = RequestScanner::new(limits);
            let mut buf = BytesMut::new();
            let mut result = Ok(None);
            for chunk in chunks {
                buf.extend_from_slice(chunk);
                result = scanner.next_request(&mut buf);
            }
            result
        };
        // Found by the resp_request fuzz target: whole, "invalid bulk length"; split, "too big bulk count string".
        let long_bulk = b"*1\r\n$0000000000000000000000004\r\nPING\r\n";
        assert_eq!(scan(&[long_bulk]), Err(ProtocolError::TooBigBulkCount));
        assert_eq!(scan(&[&long_bulk[..30], &long_bulk[30..]]), Err(ProtocolError::TooBigBulkCount));
        let long_count = b"*0000000000000000000000001\r\n$4\r\nPING\r\n";
        assert_eq!(scan(&[long_count]), Err(ProtocolError::TooBigMultibulkCount));
        assert_eq!(scan(&[&long_count[..26], &long_count[26..]]), Err(ProtocolError::TooBigMultibulkCount));
    }

    #[test]
    fn large_value_is_resumed_not_rescanned() {
        let value = vec![7u8; 1 << 20];
        let mut frame = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${}\r\n", value.len()).into_bytes();
        frame.extend_from_slice(&value);
        frame.extend_from_slice(b"\r\n");
        let mut scanner = RequestScanner::new(Limits::default());
        let mut buf = BytesMut::new();
        let mut done = None;
        for chunk in frame.chunks(16 * 1024) {
            buf.extend_from_slice(chunk);
            if let Some(req) = scanner.next_request(&mut buf).unwrap() {
                done = Some(req);
            } else {
                // The cursor never points before the value's body once its header was read.
                assert!(scanner.partial_len() >= 24 || buf.len() < 24);
            }
        }
        let req = done.expect("complete request");
        assert_eq!(req.arg(2).unwrap(), &value[..]);
        assert_eq!(req.frame().as_ref(), &frame[..]);
    }

    proptest! {
        #[test]
        fn any_split_of_requests_yields_the_same_frames(
            args in proptest::collection::vec(proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..30), 1..5), 1..6),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut stream = Vec::new();
            for command in &args {
                let refs: Vec<&[u8]> = command.iter().map(Vec::as_slice).collect();
                stream.extend_from_slice(Request::from_args(&refs).frame());
            }
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks = Vec::new();
            let mut last = 0;
            for p in points {
                chunks.push(&stream[last..p]);
                last = p;
            }
            chunks.push(&stream[last..]);
            prop_assert_eq!(scan_requests(&chunks).unwrap(), args);
        }
    }
}
