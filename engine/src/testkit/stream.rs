//! [`RequestStream`]: the requests in the bytes a peer writes, split as a Redis server splits them.

use crate::resp::{Limits, ProtocolError, Request, RequestScanner};
use bytes::BytesMut;

/// The bytes written to one connection so far and a scanner over them: what a server (or a tap on the wire)
/// makes of a stream that arrives in arbitrary pieces.
#[derive(Debug)]
pub(crate) struct RequestStream {
    scanner: RequestScanner,
    buf: BytesMut,
}

impl RequestStream {
    /// An empty stream scanned under `limits`.
    pub(crate) fn new(limits: Limits) -> RequestStream {
        RequestStream { scanner: RequestScanner::new(limits), buf: BytesMut::new() }
    }

    /// Appends what arrived.
    pub(crate) fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete request, `Ok(None)` until more bytes arrive; after an error the stream is out of step.
    pub(crate) fn next_request(&mut self) -> Result<Option<Request>, ProtocolError> {
        self.scanner.next_request(&mut self.buf)
    }
}
