//! The `redis-proxy` binary.
fn main() {}
