//! A deterministic simulation of the engine against modelled Redis servers, for tests and fuzzing.
//!
//! [`model`] holds the servers; [`harness`] drives one or two [`crate::Engine`]s on a fake clock, carries their
//! bytes to and from the model over simulated connections, runs a few clients, applies a fault [`Scenario`] and
//! checks the failover invariants after every step.

mod harness;
mod model;
mod scenario;
#[cfg(test)]
mod tests;
