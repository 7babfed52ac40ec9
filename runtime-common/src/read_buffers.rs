//! Read buffers whose allocations are used again once the frames split off them are written.
//!
//! The engine splits frames off a read buffer without copying, so a large reply keeps its buffer's allocation
//! alive until the client's socket has taken it, and the next read of that connection needed a new allocation.
//! With replies of 100 kB and more, the allocator then grew and trimmed its heap for nearly every one (a `brk`
//! system call per reply). Here the allocations of large read buffers are kept (a few, of bounded size), and a
//! read that needs room takes one whose frames are all written instead of allocating.

use bytes::BytesMut;

/// Allocations smaller than this are left to the allocator, which reuses them cheaply.
pub const RECYCLE_MIN: usize = 64 * 1024;

/// Allocations larger than this are let go: a buffer that held a whole large request must not stay pinned.
pub const RECYCLE_MAX: usize = 4 * 1024 * 1024;

/// How many spare allocations are kept: enough for the buffers whose frames wait for one round of writes.
pub const MAX_SPARE: usize = 4;

/// Spare read-buffer allocations, each an empty [`BytesMut`] still holding its allocation, with that
/// allocation's size.
#[derive(Default)]
pub struct ReadBuffers {
    spare: Vec<(BytesMut, usize)>,
}

impl ReadBuffers {
    /// Gives `buf` (whose allocation is `alloc` bytes) room for at least `room` more bytes, keeping what it holds:
    /// its own allocation if every frame split off it is gone, else a spare one that is free, else a new one. The
    /// allocation it leaves is kept as a spare; `alloc` is updated.
    pub fn make_room(&mut self, buf: &mut BytesMut, alloc: &mut usize, room: usize) {
        if buf.try_reclaim(room) {
            return;
        }
        let needed = buf.len() + room;
        let free = self.spare.iter_mut().position(|(spare, size)| *size >= needed && spare.try_reclaim(needed));
        let (fresh, size) = match free {
            Some(index) => self.spare.swap_remove(index),
            None => (BytesMut::with_capacity(needed), needed),
        };
        let old = std::mem::replace(buf, fresh);
        buf.extend_from_slice(&old);
        let old_size = std::mem::replace(alloc, size);
        self.recycle(old, old_size);
    }

    /// Keeps the allocation behind `buf` (`alloc` bytes; what `buf` holds is dropped) for a later
    /// [`ReadBuffers::make_room`], if it is worth keeping.
    pub fn recycle(&mut self, mut buf: BytesMut, alloc: usize) {
        if !(RECYCLE_MIN..=RECYCLE_MAX).contains(&alloc) {
            return;
        }
        buf.clear();
        if self.spare.len() == MAX_SPARE {
            self.spare.remove(0);
        }
        self.spare.push((buf, alloc));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read buffer of `size` bytes, filled, with all of it split off as one frame (as the engine does).
    fn read_and_split(buffers: &mut ReadBuffers, buf: &mut BytesMut, alloc: &mut usize, size: usize) -> bytes::Bytes {
        buffers.make_room(buf, alloc, size);
        buf.resize(buf.len() + size, 7);
        buf.split().freeze()
    }

    #[test]
    fn a_buffer_whose_frames_are_written_is_used_again_without_allocating() {
        let mut buffers = ReadBuffers::default();
        let (mut buf, mut alloc) = (BytesMut::new(), 0);
        let size = 256 * 1024;
        let first = read_and_split(&mut buffers, &mut buf, &mut alloc, size);
        let first_at = first.as_ptr();
        // The first frame is not written yet: the next read gets another allocation; the first is kept as spare.
        let second = read_and_split(&mut buffers, &mut buf, &mut alloc, size);
        assert_ne!(second.as_ptr(), first_at);
        drop(first);
        // Now written: its allocation comes back for the third read.
        let third = read_and_split(&mut buffers, &mut buf, &mut alloc, size);
        assert_eq!(third.as_ptr(), first_at, "the spare allocation was reused");
        drop((second, third));
        assert_eq!(read_and_split(&mut buffers, &mut buf, &mut alloc, size).len(), size);
    }

    #[test]
    fn what_a_buffer_holds_moves_with_it_and_spares_are_bounded() {
        let mut buffers = ReadBuffers::default();
        let (mut buf, mut alloc) = (BytesMut::new(), 0);
        let mut frames = Vec::new();
        for round in 0..(MAX_SPARE * 3) {
            buffers.make_room(&mut buf, &mut alloc, 128 * 1024);
            buf.resize(buf.len() + 128 * 1024, round as u8);
            frames.push(buf.split_to(100 * 1024).freeze());
            assert!(buffers.spare.len() <= MAX_SPARE);
        }
        // Each round kept its partial 28 KiB and added 128 KiB: what was not split off is all still there.
        assert_eq!(buf.len(), MAX_SPARE * 3 * 28 * 1024);
        assert!(frames.iter().enumerate().all(|(round, f)| f.len() == 100 * 1024 && f[0] <= round as u8));
    }

    #[test]
    fn small_and_huge_allocations_are_not_kept() {
        let mut buffers = ReadBuffers::default();
        buffers.recycle(BytesMut::with_capacity(4096), 4096);
        buffers.recycle(BytesMut::with_capacity(RECYCLE_MAX + 1), RECYCLE_MAX + 1);
        assert!(buffers.spare.is_empty());
        buffers.recycle(BytesMut::with_capacity(RECYCLE_MIN), RECYCLE_MIN);
        assert_eq!(buffers.spare.len(), 1);
    }
}
