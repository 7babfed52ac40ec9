//! What a simulation run is given and gives back: the [`Scenario`] with its [`Fault`]s, the [`Outcome`] of a
//! passing run, the [`Violation`] of a failing one, and the timing constants and allowances the invariants use.

use std::fmt;

/// The engines' `check_period` in the simulation.
pub(crate) const CHECK_PERIOD_MS: u64 = 100;
/// The engines' `down_after` (their default: 3 x `check_period`).
pub(crate) const DOWN_AFTER_MS: u64 = 3 * CHECK_PERIOD_MS;
/// The engines' `busy_down_after`: longer than the slowest server's delay (1000 ms), shorter than long hangs.
pub(crate) const BUSY_DOWN_AFTER_MS: u64 = 2_000;
/// How long after a crash, restart or partition a server may be counted down from evidence that came from it.
pub(crate) const DISTURBED_MS: u64 = DOWN_AFTER_MS + CHECK_PERIOD_MS + 4 * LATENCY_MS;
/// How soon an engine stops routing to a master that crashed: the close, one refused reconnect, the failover.
pub(crate) const CRASH_ACTED_ON_MS: u64 = 6 * LATENCY_MS;
/// One-way delay between an engine and a server.
pub(crate) const LATENCY_MS: u64 = 1;
/// How often replicas catch up with their masters.
pub(crate) const REPLICATION_PERIOD_MS: u64 = 10;
/// How long after healing everything must have converged.
pub(crate) const SETTLE_MS: u64 = 5_000;
/// How long after convergence every outstanding request must have been answered.
pub(crate) const DRAIN_MS: u64 = 2_000;
/// How long after a partition heals the engines may still route to different masters: an engine that was cut
/// off sees the server again at its next probe (one check period), unless the server fails meanwhile, in which
/// case the other engine counts it down within `down_after`.
pub(crate) const PARTITION_AFTERMATH_MS: u64 = CHECK_PERIOD_MS + DOWN_AFTER_MS + 4 * LATENCY_MS;

/// A fault, applied at a scheduled simulated time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Kill the server (no-op if it is not running).
    Crash(usize),
    /// Start a crashed server again; it loads its data for `load_ms` (no-op if it runs).
    Restart {
        /// The server.
        server: usize,
        /// How long it reports `loading:1`.
        load_ms: u64,
    },
    /// Stop the server (SIGSTOP): connections are accepted, nothing is answered.
    Hang(usize),
    /// Resume a hung server: it executes everything buffered meanwhile.
    Unhang(usize),
    /// Make the server process everything `ms` late (0: normal again).
    Slow {
        /// The server.
        server: usize,
        /// The delay.
        ms: u64,
    },
    /// Cut engine `engine` off from server `server` (connections reset, connects refused).
    Partition {
        /// The engine.
        engine: usize,
        /// The server.
        server: usize,
    },
    /// Undo a partition.
    Heal {
        /// The engine.
        engine: usize,
        /// The server.
        server: usize,
    },
}

/// One simulated run: the servers, the engines, the clients and the faults.
#[derive(Clone, Debug)]
pub(crate) struct Scenario {
    /// Initial topology: `master_of[i] == i` makes server `i` a master, another index makes it that one's replica.
    pub(crate) master_of: Vec<usize>,
    /// `replica-priority` per server.
    pub(crate) priorities: Vec<i64>,
    /// How many engines watch the servers (1 or 2).
    pub(crate) engines: usize,
    /// When the second engine starts (ms), so the two probe out of step.
    pub(crate) second_engine_delay_ms: u64,
    /// Clients per engine.
    pub(crate) clients_per_engine: usize,
    /// Each client sends a request this often (ms).
    pub(crate) client_interval_ms: u64,
    /// Faults and when (ms), in any order.
    pub(crate) faults: Vec<(u64, Fault)>,
    /// Whether healing restarts the crashed servers too.
    pub(crate) restart_at_end: bool,
}

/// What a passing run did, for statistics.
#[derive(Clone, Debug, Default)]
pub(crate) struct Outcome {
    /// Requests the clients sent.
    pub(crate) requests: u64,
    /// Error replies they got.
    pub(crate) errors: u64,
    /// Writes acknowledged with `+OK`.
    pub(crate) acked_writes: u64,
    /// `WAIT`s answered, and those that reported at least one replica.
    pub(crate) waits: u64,
    pub(crate) waits_confirmed: u64,
    /// Acknowledged writes missing at the end, each within Redis's asynchronous-replication window.
    pub(crate) lost_in_window: u64,
    /// The master everything converged on, if any.
    pub(crate) final_master: Option<usize>,
    /// Failovers (`REPLICAOF NO ONE` executed by a replica).
    pub(crate) promotions: u64,
    /// Simulated time, ms.
    pub(crate) simulated_ms: u64,
    /// The last faults, engine events and model changes.
    pub(crate) trace: Vec<String>,
}

/// A broken invariant: when, what, and the trace that led there.
#[derive(Clone, Debug)]
pub(crate) struct Violation {
    /// Simulated time, ms.
    pub(crate) at_ms: u64,
    /// What broke.
    pub(crate) message: String,
    /// The last faults, engine events and model changes.
    pub(crate) trace: Vec<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "at {} ms: {}", self.at_ms, self.message)?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// How long an engine may keep writing to a server another engine demoted: until its next `INFO` of it comes back
/// (one check period plus the round trip), or, if the server stops answering first while still accepting
/// connections (hung: busy, not dead), until it counts it down after `busy_down_after`. Such writes wait in the
/// server and get `-READONLY` when it resumes.
pub(crate) fn stale_master_allowance(slow_ms: u64) -> u64 {
    (CHECK_PERIOD_MS + 2 * LATENCY_MS + 2 * slow_ms).max(BUSY_DOWN_AFTER_MS) + 1
}

/// How long two engines may route to different masters: one check period plus the delays of the replies that
/// tell the slower engine, and one promotion round trip.
pub(crate) fn split_allowance(max_slow_ms: u64) -> u64 {
    CHECK_PERIOD_MS + 4 * LATENCY_MS + 2 * max_slow_ms + 1
}
