//! The scanner targets: a stream scanned whole and in chunks must give the same frames and the same error.

use crate::resp::{Limits, ProtocolError, ReplyScanner, RequestScanner};
use bytes::BytesMut;

/// Limits small enough for a fuzzer to reach every bound with short inputs.
pub fn tiny_limits() -> Limits {
    Limits { max_bulk_len: 16, max_multibulk_len: 4, max_inline_len: 24, max_request_len: 64 }
}

/// Splits a scanner target's input into chunk sizes (each 1..=256) and the payload.
fn chunking(data: &[u8]) -> (Vec<usize>, &[u8]) {
    let Some((&n, rest)) = data.split_first() else { return (Vec::new(), data) };
    let n = usize::from(n % 8).min(rest.len());
    let (sizes, payload) = rest.split_at(n);
    (sizes.iter().map(|&s| usize::from(s) + 1).collect(), payload)
}

/// Cuts `payload` into consecutive chunks of the given sizes, cycled; one chunk when there are no sizes.
fn chunks<'a>(payload: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    if sizes.is_empty() {
        return vec![payload];
    }
    let mut out = Vec::new();
    let mut at = 0;
    for &size in sizes.iter().cycle() {
        if at >= payload.len() {
            break;
        }
        let end = (at + size).min(payload.len());
        out.push(&payload[at..end]);
        at = end;
    }
    out
}

/// What one scan of a stream gave: the frames up to the first error, and that error.
struct Scan<T> {
    frames: Vec<T>,
    error: Option<ProtocolError>,
}

fn scan<T>(pieces: &[&[u8]], mut next: impl FnMut(&mut BytesMut) -> Result<Option<T>, ProtocolError>) -> Scan<T> {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match next(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(error) => return Scan { frames, error: Some(error) },
            }
        }
    }
    Scan { frames, error: None }
}

/// Requests: the same frames whole and chunked, every frame self-contained.
pub fn resp_request(data: &[u8]) {
    let (sizes, payload) = chunking(data);
    for limits in [Limits::default(), tiny_limits()] {
        let mut scanner = RequestScanner::new(limits);
        let whole = scan(&[payload], |buf| scanner.next_request(buf));
        let mut scanner = RequestScanner::new(limits);
        let chunked = scan(&chunks(payload, &sizes), |buf| scanner.next_request(buf));
        assert_eq!(whole.frames, chunked.frames, "frames differ between a whole and a chunked scan");
        assert_eq!(whole.error, chunked.error, "errors differ between a whole and a chunked scan");
        for request in &whole.frames {
            if request.is_empty() {
                continue;
            }
            // The frame the engine forwards is one complete request by itself, with the same arguments.
            let mut alone = BytesMut::from(&request.frame()[..]);
            let again = RequestScanner::new(Limits::default()).next_request(&mut alone);
            assert_eq!(again.as_ref().ok().and_then(Option::as_ref), Some(request), "a frame does not rescan");
            assert!(alone.is_empty(), "a request frame holds more than one request");
        }
    }
}

/// Replies: the same frames whole and chunked, and the frames are exactly the consumed bytes.
pub fn resp_reply(data: &[u8]) {
    let (sizes, payload) = chunking(data);
    for limits in [Limits::default(), tiny_limits()] {
        let mut scanner = ReplyScanner::new(limits);
        let whole = scan(&[payload], |buf| scanner.next_reply(buf));
        let mut scanner = ReplyScanner::new(limits);
        let chunked = scan(&chunks(payload, &sizes), |buf| scanner.next_reply(buf));
        assert_eq!(whole.frames, chunked.frames, "frames differ between a whole and a chunked scan");
        assert_eq!(whole.error, chunked.error, "errors differ between a whole and a chunked scan");
        let consumed: Vec<u8> = whole.frames.concat();
        assert!(payload.starts_with(&consumed), "reply frames are not the stream's bytes in order");
        for frame in &whole.frames {
            let mut alone = BytesMut::from(&frame[..]);
            let again = ReplyScanner::new(limits).next_reply(&mut alone);
            assert_eq!(again, Ok(Some(frame.clone())), "a reply frame does not rescan");
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn chunking_covers_the_payload() {
        let (sizes, payload) = super::chunking(b"\x02\x00\x02abcdefg");
        assert_eq!(sizes, vec![1, 3]);
        assert_eq!(super::chunks(payload, &sizes), vec![&b"a"[..], b"bcd", b"e", b"fg"]);
    }
}
