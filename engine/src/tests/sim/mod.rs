//! A deterministic simulation of the engine against modelled Redis servers, for tests and fuzzing.
//!
//! [`model`] holds the servers (the configured ones and spares an operator may add); [`harness`] drives one or two
//! [`crate::Engine`]s (or one deciding engine and its workers) on a fake clock, carries their bytes to and from the model over simulated connections, runs
//! a few clients (`SET`/`GET`/`WAIT`, or mixed traffic with pipelines, `ECHO`, `MULTI`/`EXEC` and `SCAN`
//! iterations), applies a [`Scenario`]'s faults and operator actions (`PROXY ADD/REMOVE/FAILOVER`, reloads) and
//! checks the invariants after every step.

mod harness;
mod model;
mod scenario;
#[cfg(test)]
mod tests;
