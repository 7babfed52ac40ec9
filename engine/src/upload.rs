//! Cut-through forwarding of large requests: a request whose last argument is a bulk string of at least
//! [`UPLOAD_MIN`] bytes goes to the server piece by piece as the value arrives, once everything before that value
//! is here, instead of being held whole. The proxy then holds of the value what one read brought in plus what the
//! server's socket has not taken yet; when the server's connection is blocked on writing, the client is not read
//! until it drains.
//!
//! An upload goes on a private connection of its client (taken for the request and given back once the reply is
//! in): a shared connection would carry nothing else until the client sent its last byte, so one slow client
//! would stall every other client on it. The value's final CRLF is held back until both of its bytes are here
//! and checked: Redis runs a request only once it has those bytes, so a malformed request never runs.

use crate::conn::ConnId;
use bytes::{Bytes, BytesMut};

/// Requests whose last argument is at least this long, and not yet all here, are uploaded piece by piece. Smaller
/// ones are held whole: one frame on a shared connection costs less than a private connection's `RESET`.
pub(crate) const UPLOAD_MIN: usize = 1024 * 1024;

/// The longest part before the value that an upload takes: a command, a key and a few options, copied once.
pub(crate) const UPLOAD_HEAD_MAX: usize = 64 * 1024;

/// One request being uploaded from a client to a backend connection.
struct Upload {
    client: ConnId,
    backend: ConnId,
    /// Bytes of the value still to come, its CRLF not counted.
    left: usize,
    /// The backend connection is blocked on writing: the client is not read until it drains.
    blocked: bool,
}

/// What the bytes that arrived from an uploading client are.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum UploadPiece {
    /// More of the value, for `backend`; more is to come.
    Part {
        /// The connection the request goes on.
        backend: ConnId,
        /// The bytes (never empty).
        data: Bytes,
    },
    /// Nothing to forward yet: what is here is the start of the value's CRLF, kept until it is whole.
    Waiting,
    /// The value's last bytes and its CRLF: the request is complete on `backend`.
    Last {
        /// The connection the request went on.
        backend: ConnId,
        /// The bytes.
        data: Bytes,
        /// The client was paused for the backend connection: reading it must resume.
        was_blocked: bool,
    },
    /// The two bytes after the value are not CRLF: the client is out of step, and the request must not run.
    BadTerminator {
        /// The connection holding the request's start.
        backend: ConnId,
    },
}

/// The requests being uploaded (a handful at most: one per client).
#[derive(Default)]
pub(crate) struct Uploads {
    active: Vec<Upload>,
}

impl Uploads {
    /// Whether no request is being uploaded (the check the request path makes).
    pub(crate) fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// Uploads the rest of `client`'s request (a value of `left` bytes, then its CRLF) on `backend`.
    pub(crate) fn start(&mut self, client: ConnId, backend: ConnId, left: usize) {
        self.active.push(Upload { client, backend, left, blocked: false });
    }

    /// Splits off `buf` what belongs to the request `client` is uploading; None when it uploads nothing.
    pub(crate) fn take(&mut self, client: ConnId, buf: &mut BytesMut) -> Option<UploadPiece> {
        let index = self.active.iter().position(|u| u.client == client)?;
        let upload = &mut self.active[index];
        if buf.len() >= upload.left + 2 {
            if &buf[upload.left..upload.left + 2] != b"\r\n" {
                // Kept: the caller gives the connection up, and [`Uploads::remove_backend`] forgets it.
                return Some(UploadPiece::BadTerminator { backend: upload.backend });
            }
            let data = buf.split_to(upload.left + 2).freeze();
            let upload = self.active.swap_remove(index);
            return Some(UploadPiece::Last { backend: upload.backend, data, was_blocked: upload.blocked });
        }
        let body = buf.len().min(upload.left);
        if body == 0 {
            return Some(UploadPiece::Waiting);
        }
        upload.left -= body;
        Some(UploadPiece::Part { backend: upload.backend, data: buf.split_to(body).freeze() })
    }

    /// The backend connection `backend` is blocked on writing (or drained): returns the uploading client to
    /// pause (or resume) when its state changed.
    pub(crate) fn backend_blocked(&mut self, backend: ConnId, blocked: bool) -> Option<ConnId> {
        let upload = self.active.iter_mut().find(|u| u.backend == backend && u.blocked != blocked)?;
        upload.blocked = blocked;
        Some(upload.client)
    }

    /// Forgets the upload on `backend` (the connection is gone); returns its client.
    pub(crate) fn remove_backend(&mut self, backend: ConnId) -> Option<ConnId> {
        let index = self.active.iter().position(|u| u.backend == backend)?;
        Some(self.active.swap_remove(index).client)
    }

    /// Forgets the uploads of clients that are gone (their backend connections are closed, never reused: they
    /// hold part of a request).
    pub(crate) fn retain_clients(&mut self, client_open: impl Fn(ConnId) -> bool) {
        self.active.retain(|u| client_open(u.client));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::client_and_backend_ids as ids;

    #[test]
    fn pieces_end_at_the_value_and_its_crlf_goes_only_once_checked() {
        let (client, backend) = ids();
        let mut uploads = Uploads::default();
        uploads.start(client, backend, 5);
        let mut buf = BytesMut::from(&b"abc"[..]);
        let part = UploadPiece::Part { backend, data: Bytes::from_static(b"abc") };
        assert_eq!(uploads.take(client, &mut buf), Some(part));
        assert_eq!(uploads.take(client, &mut buf), Some(UploadPiece::Waiting), "nothing arrived");
        buf.extend_from_slice(b"de\r");
        let part = UploadPiece::Part { backend, data: Bytes::from_static(b"de") };
        assert_eq!(uploads.take(client, &mut buf), Some(part));
        assert_eq!(uploads.take(client, &mut buf), Some(UploadPiece::Waiting), "half a CRLF is held");
        assert_eq!(&buf[..], b"\r");
        buf.extend_from_slice(b"\n*1\r\n");
        let last = UploadPiece::Last { backend, data: Bytes::from_static(b"\r\n"), was_blocked: false };
        assert_eq!(uploads.take(client, &mut buf), Some(last));
        assert_eq!(&buf[..], b"*1\r\n", "the next request stays for the scanner");
        assert!(uploads.is_empty());
        assert_eq!(uploads.take(client, &mut buf), None);
    }

    #[test]
    fn a_wrong_terminator_split_anywhere_is_caught_before_it_is_sent() {
        let (client, backend) = ids();
        for bad in [&b"ab\rX"[..], b"abX\n", b"abcd"] {
            for cut in 0..=bad.len() {
                let mut uploads = Uploads::default();
                uploads.start(client, backend, 2);
                let mut sent = Vec::new();
                let mut buf = BytesMut::new();
                let mut caught = false;
                for chunk in [&bad[..cut], &bad[cut..]] {
                    buf.extend_from_slice(chunk);
                    match uploads.take(client, &mut buf) {
                        Some(UploadPiece::Part { data, .. }) => sent.extend_from_slice(&data),
                        Some(UploadPiece::BadTerminator { .. }) => caught = true,
                        Some(UploadPiece::Waiting) => {}
                        other => panic!("{bad:?} cut at {cut}: {other:?}"),
                    }
                }
                assert!(caught, "{bad:?} cut at {cut}");
                assert!(b"ab".starts_with(&sent), "only value bytes went on: {bad:?} cut at {cut}: {sent:?}");
            }
        }
    }

    #[test]
    fn a_blocked_backend_pauses_its_client_once_and_a_lost_one_is_forgotten() {
        let (client, backend) = ids();
        let mut uploads = Uploads::default();
        uploads.start(client, backend, 10);
        assert_eq!(uploads.backend_blocked(backend, true), Some(client));
        assert_eq!(uploads.backend_blocked(backend, true), None, "already paused");
        assert_eq!(uploads.backend_blocked(backend, false), Some(client));
        uploads.backend_blocked(backend, true);
        let mut buf = BytesMut::from(&b"0123456789\r\n"[..]);
        let last = uploads.take(client, &mut buf);
        assert!(matches!(last, Some(UploadPiece::Last { was_blocked: true, .. })), "{last:?}");
        uploads.start(client, backend, 10);
        assert_eq!(uploads.remove_backend(backend), Some(client));
        assert!(uploads.is_empty());
        uploads.start(client, backend, 10);
        uploads.retain_clients(|_| true);
        assert!(!uploads.is_empty());
        uploads.retain_clients(|_| false);
        assert!(uploads.is_empty());
    }
}
