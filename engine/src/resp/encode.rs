//! Encoders for what the proxy writes itself: multibulk and bulk headers, bulk and error replies.

use bytes::{BufMut, Bytes, BytesMut};

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

/// Encodes a bulk string reply `$<len>\r\n<data>\r\n`.
pub(crate) fn bulk_reply(data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 16);
    put_bulk_header(&mut out, data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out.freeze()
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
