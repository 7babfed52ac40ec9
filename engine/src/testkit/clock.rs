//! [`FakeClock`]: time that moves only when a test moves it.

use std::time::{Duration, Instant};

/// A clock that stands still until told to move, so an engine's timers fire exactly when a test says.
#[derive(Clone, Copy, Debug)]
pub struct FakeClock {
    start: Instant,
    now: Instant,
}

impl Default for FakeClock {
    fn default() -> Self {
        FakeClock::new()
    }
}

impl FakeClock {
    /// A clock standing at the real time it was made; only [`FakeClock::advance`] and friends move it.
    pub fn new() -> FakeClock {
        let start = Instant::now();
        FakeClock { start, now: start }
    }

    /// Where the clock started.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// The time now.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Moves the clock forward by `by` and returns the new time.
    pub fn advance(&mut self, by: Duration) -> Instant {
        self.now += by;
        self.now
    }

    /// Moves the clock to `at`, or leaves it where it is if `at` has passed: time never runs backwards.
    pub fn advance_to(&mut self, at: Instant) -> Instant {
        self.now = self.now.max(at);
        self.now
    }

    /// The instant `ms` whole milliseconds after the start.
    pub fn at_ms(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    /// Whole milliseconds from the start to now (the clock only ever moves in whole milliseconds when a test
    /// counts in them).
    pub fn ms(&self) -> u64 {
        self.ms_of(self.now)
    }

    /// Whole milliseconds from the start to `at`, rounded up: a deadline between two milliseconds is due at the
    /// later one, never before it.
    pub fn ms_of(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.start);
        let whole = since.as_millis() as u64;
        if Duration::from_millis(whole) < since {
            whole + 1
        } else {
            whole
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_only_forward_and_rounds_deadlines_up() {
        let mut clock = FakeClock::new();
        assert_eq!(clock.now(), clock.start());
        clock.advance(Duration::from_millis(5));
        assert_eq!(clock.ms(), 5);
        clock.advance_to(clock.at_ms(3));
        assert_eq!(clock.ms(), 5, "advance_to never goes back");
        assert_eq!(clock.ms_of(clock.at_ms(7) + Duration::from_micros(1)), 8);
    }
}
