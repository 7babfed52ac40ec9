//! Bytes waiting for one socket, written with vectored writes, and the backpressure edges the engine hears about.

use bytes::{Buf, Bytes};
use redis_proxy_engine::{ConnId, Input};
use std::collections::VecDeque;
use std::io::{self, IoSlice};

/// Buffers handed to one `writev` (far below every platform's `IOV_MAX`).
pub const MAX_IOVECS: usize = 64;

/// What the engine asked to send on one connection and the socket has not taken yet.
#[derive(Debug, Default)]
pub struct WriteQueue {
    out: VecDeque<Bytes>,
    /// Reported [`Input::WriteBlocked`] and not yet [`Input::Drained`].
    blocked: bool,
    /// On the runtime's list of connections to write at the end of the turn.
    scheduled: bool,
}

impl WriteQueue {
    /// An empty queue.
    pub fn new() -> WriteQueue {
        WriteQueue::default()
    }

    /// Queues `data`; returns true when the connection is not yet on the runtime's list of connections to write
    /// this turn (the caller puts it there), so replies produced in one turn leave in one `writev`.
    #[must_use]
    pub fn push(&mut self, data: Bytes) -> bool {
        self.out.push_back(data);
        self.schedule()
    }

    /// Marks the connection for a write at the end of the turn (e.g. it just connected with bytes queued);
    /// returns true when the caller must put it on its list, as [`WriteQueue::push`].
    #[must_use]
    pub fn schedule(&mut self) -> bool {
        !std::mem::replace(&mut self.scheduled, true)
    }

    /// Takes the connection off the list of connections to write (the caller writes it now).
    pub fn unschedule(&mut self) {
        self.scheduled = false;
    }

    /// Whether every queued byte has been written.
    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// Writes from the front of the queue until it is empty or the socket would block, with `write` doing one
    /// vectored write of at most [`MAX_IOVECS`] buffers (it must not block); returns how many bytes the socket
    /// took. A buffer the socket took part of is advanced past that part. An error means the socket is broken.
    pub fn write_with(&mut self, mut write: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>) -> io::Result<usize> {
        let mut total = 0;
        while !self.out.is_empty() {
            // Runs once per reply written at low pipeline depth: the slices live on the stack, not the heap.
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            for (slot, data) in slices.iter_mut().zip(self.out.iter()) {
                *slot = IoSlice::new(data);
                count += 1;
            }
            match write(&slices[..count]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    total += written;
                    self.consume(written);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(total)
    }

    fn consume(&mut self, mut written: usize) {
        while written > 0 {
            let front = self.out.front_mut().expect("written bytes came from the queue");
            if written >= front.len() {
                written -= front.len();
                self.out.pop_front();
            } else {
                front.advance(written);
                written = 0;
            }
        }
    }

    /// What the engine must hear after a write: [`Input::WriteBlocked`] once when bytes are left over,
    /// [`Input::Drained`] once when the queue has emptied after that; None when nothing changed.
    pub fn backpressure(&mut self, conn: ConnId) -> Option<Input<'static>> {
        let blocked = !self.out.is_empty();
        if blocked == self.blocked {
            return None;
        }
        self.blocked = blocked;
        Some(if blocked { Input::WriteBlocked { conn } } else { Input::Drained { conn } })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_conn;

    /// A socket that takes at most `room` bytes per call and records what it took.
    fn socket(room: usize, taken: &mut Vec<u8>) -> impl FnMut(&[IoSlice<'_>]) -> io::Result<usize> + '_ {
        move |slices| {
            assert!(slices.len() <= MAX_IOVECS);
            if room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let before = taken.len();
            for slice in slices {
                let left = room - (taken.len() - before);
                taken.extend_from_slice(&slice[..slice.len().min(left)]);
            }
            Ok(taken.len() - before)
        }
    }

    #[test]
    fn writes_in_order_across_partial_writes_and_many_buffers() {
        let mut queue = WriteQueue::new();
        let mut expected = Vec::new();
        for i in 0..200u8 {
            let data = vec![i; 1 + usize::from(i) % 7];
            expected.extend_from_slice(&data);
            let _ = queue.push(Bytes::from(data));
        }
        let mut taken = Vec::new();
        // Three bytes per write: buffers are split mid-way and advanced.
        let written = queue.write_with(socket(3, &mut taken)).expect("no error");
        assert!(queue.is_empty());
        assert_eq!(written, expected.len());
        assert_eq!(taken, expected);
    }

    #[test]
    fn reports_blocked_once_and_drained_once() {
        let conn = test_conn();
        let mut queue = WriteQueue::new();
        let _ = queue.push(Bytes::from_static(b"hello"));
        let mut taken = Vec::new();
        assert_eq!(queue.write_with(socket(0, &mut taken)).expect("would block is no error"), 0);
        assert!(matches!(queue.backpressure(conn), Some(Input::WriteBlocked { .. })));
        assert!(queue.backpressure(conn).is_none(), "reported once");
        assert_eq!(queue.write_with(socket(2, &mut taken)).expect("partial"), 5);
        assert!(matches!(queue.backpressure(conn), Some(Input::Drained { .. })));
        assert!(queue.backpressure(conn).is_none(), "reported once");
        assert_eq!(taken, b"hello");
    }

    #[test]
    fn schedules_once_per_turn_and_fails_on_a_broken_socket() {
        let mut queue = WriteQueue::new();
        assert!(queue.push(Bytes::from_static(b"a")));
        assert!(!queue.push(Bytes::from_static(b"b")), "already on this turn's list");
        queue.unschedule();
        assert!(queue.push(Bytes::from_static(b"c")));
        assert!(queue.write_with(|_| Ok(0)).is_err(), "a socket that takes nothing is broken");
        assert!(queue.write_with(|_| Err(io::ErrorKind::BrokenPipe.into())).is_err());
    }
}
