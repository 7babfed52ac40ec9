//! A connection the engine closed: every queued byte is written first, then the FIN, as Redis does after `QUIT`.

use crate::write_queue::WriteQueue;
use std::io::{self, IoSlice};
use std::time::{Duration, Instant};

/// How long a closing connection may go without its socket taking a single byte before it is abandoned.
///
/// The bound is on lack of progress, not on time since the close: a client that reads a large backlog slowly
/// still gets all of it, and one that stopped reading altogether cannot hold its socket forever.
pub const CLOSE_STALL: Duration = Duration::from_secs(30);

/// Reads of a closing connection's input, discarded, per call of [`Closing::discard_input`].
const DISCARDS_PER_CALL: usize = 16;
/// Calls of [`Closing::discard_input`] in [`Closing::drain_before_fin`]: at most 16 MiB, more than a socket's
/// receive buffer holds, yet a bound when the peer keeps sending.
const DRAIN_CALLS_BEFORE_FIN: usize = 64;

/// A closing connection's remaining output and how long it has gone without progress.
///
/// While it closes, the runtime keeps reading the socket and throws the bytes away (the engine is done with the
/// connection): closing a socket whose kernel receive buffer holds unread bytes makes the kernel send a reset,
/// which discards what was still on its way to the peer.
#[derive(Debug)]
pub struct Closing {
    queue: WriteQueue,
    last_progress: Instant,
}

/// What a runtime does with a closing connection after [`Closing::flush`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseStep {
    /// Bytes are left: wait until the socket is writable (or [`Closing::deadline`] passes) and flush again.
    Wait,
    /// Everything is written: shut down the write side (the FIN follows the last byte) and drop the socket.
    Finish,
    /// Give up and drop the socket: it is broken, or took nothing for [`CLOSE_STALL`].
    Abandon,
}

/// What [`Closing::discard_input`] found on the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discarded {
    /// The input buffer is empty for now.
    Empty,
    /// The peer shut down its side; it may still read what we send.
    PeerClosed,
    /// The cap per call was reached: more may be waiting (call again next turn).
    More,
}

impl Closing {
    /// Starts closing a connection with what is still queued for it.
    pub fn new(queue: WriteQueue, now: Instant) -> Closing {
        Closing { queue, last_progress: now }
    }

    /// Writes what the socket takes with `write` (as [`WriteQueue::write_with`]) and says what to do next.
    pub fn flush(&mut self, now: Instant, write: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>) -> CloseStep {
        match self.queue.write_with(write) {
            Err(_) => CloseStep::Abandon,
            Ok(_) if self.queue.is_empty() => CloseStep::Finish,
            Ok(0) if now >= self.deadline() => CloseStep::Abandon,
            Ok(0) => CloseStep::Wait,
            Ok(_) => {
                self.last_progress = now;
                CloseStep::Wait
            }
        }
    }

    /// Once [`Closing::flush`] said [`CloseStep::Finish`], what to do about a layer between the queue and the
    /// socket that still holds bytes (TLS records and `close_notify`): `flushed` is that layer's flush, true when
    /// it holds nothing more. Such a layer is bounded (rustls' buffer), so the stall bound stays the same.
    pub fn finish_layer(&mut self, now: Instant, flushed: io::Result<bool>) -> CloseStep {
        match flushed {
            Ok(true) => CloseStep::Finish,
            Ok(false) if now >= self.deadline() => CloseStep::Abandon,
            Ok(false) => CloseStep::Wait,
            Err(_) => CloseStep::Abandon,
        }
    }

    /// When the connection is abandoned unless the socket takes a byte before.
    pub fn deadline(&self) -> Instant {
        self.last_progress + CLOSE_STALL
    }

    /// Reads and throws away what the peer sent, with `read` doing one non-blocking read into the scratch buffer;
    /// an error means the socket is broken.
    pub fn discard_input(mut read: impl FnMut(&mut [u8]) -> io::Result<usize>) -> io::Result<Discarded> {
        let mut scratch = [0u8; 16 * 1024];
        for _ in 0..DISCARDS_PER_CALL {
            match read(&mut scratch) {
                Ok(0) => return Ok(Discarded::PeerClosed),
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(Discarded::Empty),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(Discarded::More)
    }

    /// Reads and drops everything the peer has sent so far, just before the runtime sends the FIN and drops the
    /// socket: closing a socket with unread input makes the kernel reset the connection and throw away what is
    /// still on its way to the peer.
    pub fn drain_before_fin(mut read: impl FnMut(&mut [u8]) -> io::Result<usize>) {
        for _ in 0..DRAIN_CALLS_BEFORE_FIN {
            if !matches!(Self::discard_input(&mut read), Ok(Discarded::More)) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn queue_of(len: usize) -> WriteQueue {
        let mut queue = WriteQueue::new();
        let _ = queue.push(Bytes::from(vec![b'x'; len]));
        queue
    }

    #[test]
    fn finishes_once_everything_is_written_however_long_it_takes() {
        let start = Instant::now();
        let mut closing = Closing::new(queue_of(10), start);
        // One byte every 20 s: slow, but never 30 s without progress.
        for step in 1..10 {
            let now = start + Duration::from_secs(20 * step);
            let mut taken = false;
            let write = |_: &[IoSlice<'_>]| {
                if std::mem::replace(&mut taken, true) {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(1)
                }
            };
            assert_eq!(closing.flush(now, write), CloseStep::Wait, "step {step}");
        }
        assert_eq!(closing.flush(start + Duration::from_secs(200), |_| Ok(1)), CloseStep::Finish);
    }

    #[test]
    fn abandons_after_the_stall_bound_without_progress() {
        let start = Instant::now();
        let mut closing = Closing::new(queue_of(10), start);
        let blocked = |_: &[IoSlice<'_>]| Err(io::ErrorKind::WouldBlock.into());
        assert_eq!(closing.flush(start + CLOSE_STALL / 2, blocked), CloseStep::Wait);
        assert_eq!(closing.deadline(), start + CLOSE_STALL);
        assert_eq!(closing.flush(start + CLOSE_STALL, blocked), CloseStep::Abandon);
        let mut broken = Closing::new(queue_of(10), start);
        assert_eq!(broken.flush(start, |_| Err(io::ErrorKind::ConnectionReset.into())), CloseStep::Abandon);
    }

    #[test]
    fn discards_input_until_empty_or_closed_or_the_cap() {
        let mut chunks = 3;
        let read = |_: &mut [u8]| {
            if chunks == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            chunks -= 1;
            Ok(100)
        };
        assert_eq!(Closing::discard_input(read).expect("no error"), Discarded::Empty);
        assert_eq!(Closing::discard_input(|_| Ok(0)).expect("no error"), Discarded::PeerClosed);
        assert_eq!(Closing::discard_input(|_| Ok(1)).expect("no error"), Discarded::More);
        assert!(Closing::discard_input(|_| Err(io::ErrorKind::ConnectionReset.into())).is_err());
    }

    #[test]
    fn drains_before_the_fin_until_empty_but_not_forever() {
        let mut reads = 0;
        Closing::drain_before_fin(|_| {
            reads += 1;
            if reads > 40 {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(1)
            }
        });
        assert_eq!(reads, 41, "past one call's cap, until the buffer is empty");
        let mut endless = 0;
        Closing::drain_before_fin(|_| {
            endless += 1;
            Ok(1)
        });
        assert_eq!(endless, DRAIN_CALLS_BEFORE_FIN * DISCARDS_PER_CALL, "a peer that never stops is not waited for");
    }
}
