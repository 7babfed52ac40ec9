//! Streaming RESP2/RESP3 scanning: requests from clients and replies from servers.
//!
//! Both scanners split complete frames off the caller's [`BytesMut`] as [`Bytes`] (zero-copy) and keep a resume
//! cursor between calls, so a large value that arrives in many reads is scanned once, in linear time. Every
//! length is bounded by [`Limits`]; exceeding one is a [`ProtocolError`] worded as Redis words it.

use bytes::{BufMut, Bytes, BytesMut};
use smallvec::SmallVec;
use std::fmt;

/// Bounds on what a peer may send, as Redis enforces them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest bulk string accepted (Redis: `proto-max-bulk-len`, 512 MiB).
    pub max_bulk_len: usize,
    /// Most elements in one multibulk or aggregate (Redis accepts up to `i32::MAX`).
    pub max_multibulk_len: usize,
    /// Deepest nesting of aggregates in a reply.
    pub max_depth: usize,
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
            max_depth: 128,
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
    /// A reply nested deeper than the limit.
    TooDeep,
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
            ProtocolError::TooDeep => f.write_str("Protocol error: reply nested too deeply"),
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

/// Reads `<digits>\r\n` at `at` when it is a plain number of at most 9 digits; returns it and where the next line
/// starts. Anything else (a sign, more digits, a missing CRLF, the end of the buffer) is None.
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
                // Reserve for the whole value at once so a large value is not copied on every regrowth.
                buf.reserve(pos + len + 2 - buf.len());
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

/// Splits an inline command line into arguments like Redis's `sdssplitargs` (quotes and escapes).
fn split_inline_args(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= line.len() {
            return Ok(args);
        }
        let mut current = Vec::new();
        let mut in_double = false;
        let mut in_single = false;
        loop {
            let c = line.get(i).copied();
            if in_double {
                match c {
                    None => return Err(ProtocolError::UnbalancedQuotes),
                    Some(b'\\') if line.get(i + 1) == Some(&b'x') => {
                        let hex = |b: u8| (b as char).to_digit(16);
                        match (line.get(i + 2).and_then(|&b| hex(b)), line.get(i + 3).and_then(|&b| hex(b))) {
                            (Some(h), Some(l)) => {
                                current.push((h * 16 + l) as u8);
                                i += 3;
                            }
                            _ => {
                                current.push(b'x');
                                i += 1;
                            }
                        }
                    }
                    Some(b'\\') if i + 1 < line.len() => {
                        i += 1;
                        current.push(match line[i] {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 8,
                            b'a' => 7,
                            other => other,
                        });
                    }
                    Some(b'"') => {
                        if line.get(i + 1).is_some_and(|b| !b.is_ascii_whitespace()) {
                            return Err(ProtocolError::UnbalancedQuotes);
                        }
                        i += 1;
                        break;
                    }
                    Some(other) => current.push(other),
                }
            } else if in_single {
                match c {
                    None => return Err(ProtocolError::UnbalancedQuotes),
                    Some(b'\\') if line.get(i + 1) == Some(&b'\'') => {
                        i += 1;
                        current.push(b'\'');
                    }
                    Some(b'\'') => {
                        if line.get(i + 1).is_some_and(|b| !b.is_ascii_whitespace()) {
                            return Err(ProtocolError::UnbalancedQuotes);
                        }
                        i += 1;
                        break;
                    }
                    Some(other) => current.push(other),
                }
            } else {
                match c {
                    None => break,
                    Some(b) if b.is_ascii_whitespace() => break,
                    Some(b'"') => in_double = true,
                    Some(b'\'') => in_single = true,
                    Some(other) => current.push(other),
                }
            }
            i += 1;
        }
        args.push(current);
    }
}

/// Resumable scanner for replies from a server: any RESP2 or RESP3 frame, nested aggregates included.
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
                    buf.reserve(self.pos + len + 2 - buf.len());
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
                    } else if self.open.len() >= self.limits.max_depth {
                        return Err(ProtocolError::TooDeep);
                    } else {
                        self.open.push(count as usize * per_entry);
                    }
                }
                other => return Err(ProtocolError::UnknownType(other)),
            }
        }
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

/// Appends `*<len>\r\n`.
pub(crate) fn put_array_header(out: &mut BytesMut, len: usize) {
    out.put_u8(b'*');
    put_decimal(out, len);
    out.put_slice(b"\r\n");
}

/// Appends `$<len>\r\n`.
pub(crate) fn put_bulk_header(out: &mut BytesMut, len: usize) {
    out.put_u8(b'$');
    put_decimal(out, len);
    out.put_slice(b"\r\n");
}

fn put_decimal(out: &mut BytesMut, value: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut v = value;
    loop {
        at -= 1;
        digits[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.put_slice(&digits[at..]);
}

/// Encodes a status reply `+<message>\r\n` (the message must not hold CR or LF).
pub(crate) fn simple_reply(message: &str) -> Bytes {
    Bytes::from(format!("+{message}\r\n"))
}

/// Encodes an error reply `-<message>\r\n`, replacing CR and LF in the message so the frame stays valid.
pub(crate) fn error_reply(message: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(message.len() + 3);
    out.put_u8(b'-');
    out.extend(message.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
    out.put_slice(b"\r\n");
    out.freeze()
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

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut requests = RequestScanner::new(Limits { max_inline_len: 64, ..Limits::default() });
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = requests.next_request(&mut buf) {}
            let mut replies = ReplyScanner::new(Limits { max_depth: 4, ..Limits::default() });
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = replies.next_reply(&mut buf) {}
        }
    }
}
