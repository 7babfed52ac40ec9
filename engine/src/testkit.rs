//! The test kit: one way to fake a Redis server's probe replies and drive an [`Engine`](crate::Engine) on a fake
//! clock, shared by the unit tests, the simulation, the fuzz targets and the engine benchmark.
//!
//! Compiled for the crate's tests and with the `testkit` feature (which `fuzzing` turns on); not part of the
//! engine's API otherwise.
//!
//! - [`FakeClock`]: a start instant and explicit moves.
//! - [`Info`] and [`FakeServer`]: what a server reports in `INFO` (as a master, or as a replica of some master
//!   with given offsets, run id, priority and link state), and a responder for the probe's `PING` + `INFO`, for
//!   `REPLICAOF` and `RESET`.
//! - [`Driver`]: an engine with its clock, per-connection read buffers, helpers to drain actions, report connects,
//!   feed replies, run a probe round, and [`Driver::with_master`] for an engine whose server 0 is adopted
//!   ([`Driver::decider_with_master`] and [`Driver::new_worker`] for a deciding engine and its workers); several
//!   drivers follow one shared clock with [`Driver::catch_up`] (the simulation, the Sentinel-mode tests).

mod clock;
mod driver;
mod server;
// Only the fuzz harness and the simulation tap streams with the engine's scanner (see `server::split_multibulk`).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod stream;

pub use clock::FakeClock;
pub use driver::{config, connects, master_and_replicas, port_of, readable, sent_on, Driver};
pub use server::{ConnectedReplica, FakeServer, Info, ReplicaLink};
