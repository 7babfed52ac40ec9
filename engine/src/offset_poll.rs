//! The repeating deadline on which replication offsets are re-read while `WAIT`s or read fences need them.

use std::time::{Duration, Instant};

/// When the offsets are next read, while something needs them.
#[derive(Debug, Default)]
pub(crate) struct PollSchedule {
    next: Option<Instant>,
}

impl PollSchedule {
    /// Whether the offsets should be read at `now`, while `needed`; a read that is due schedules the next one
    /// `every` later, and nothing needed clears the schedule.
    pub(crate) fn due(&mut self, now: Instant, needed: bool, every: Duration) -> bool {
        if !needed {
            self.next = None;
            return false;
        }
        if self.next.is_some_and(|at| now < at) {
            return false;
        }
        self.next = Some(now + every);
        true
    }

    /// When the next read is due, while polling.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_once_per_period_while_needed() {
        let (t0, every) = (Instant::now(), Duration::from_millis(10));
        let mut poll = PollSchedule::default();
        assert!(poll.due(t0, true, every));
        assert!(!poll.due(t0 + every / 2, true, every), "not again within the period");
        assert!(poll.due(t0 + every, true, every));
        assert_eq!(poll.next(), Some(t0 + 2 * every));
        assert!(!poll.due(t0 + 3 * every, false, every));
        assert_eq!(poll.next(), None, "nothing needed: no wake-up");
    }
}
