//! Fuzz target bodies, shared by the cargo-fuzz targets in `fuzz/` and by the test that replays their corpus.
//!
//! Each function takes the raw fuzz input and panics when an invariant breaks. Compiled for the crate's own
//! tests and with the `fuzzing` feature; not part of the engine's API otherwise.
//!
//! - [`resp_request`] and [`resp_reply`]: the input is `n`, `n` chunk sizes (`n` is the first byte mod 8), then
//!   the payload. The payload is scanned whole and in chunks of the given sizes (cycled), with default and with
//!   tiny [`Limits`](crate::Limits); both scans must give the same frames up to the first error, and both must
//!   fail or neither.
//! - [`engine_client_bytes`]: the input is decoded with `arbitrary` into a configuration and a list of
//!   operations (clients connecting, sending bytes or commands, backends connecting, failing, answering ...) run
//!   against an [`Engine`](crate::Engine) on the test kit's fake clock, checking the connection contract after
//!   every input.
//! - [`engine_admin`]: the same with an admin client's `PROXY ADD/REMOVE/FAILOVER`, reloads that add, remove,
//!   reorder and re-address servers, `SCAN` cursors and numbered `ECHO`s mixed in; replies must stay in order per
//!   client, and a removed server must get no new connection or request.
//! - [`engine_sentinel`]: the admin target in Sentinel mode, with what 1 to 3 fuzzed sentinels answer (masters
//!   that change, replica lists that add, drop and re-address servers, malformed answers), the events they
//!   publish and their outages mixed in; the engine must connect, write and read only where the sentinels said.
//! - [`engine_cluster`]: the engine in cluster mode (1 to 3 seeds) with what the fuzzed nodes answer to
//!   `CLUSTER INFO` and `CLUSTER NODES`, requests bounced with `MOVED`, `ASK`, `TRYAGAIN` and `CLUSTERDOWN`, and
//!   commands with keys; the engine must connect only where a seed or a node's answer points, answer every
//!   request once, and keep no routed request once the clients are gone.
//!
//! | module | holds |
//! |---|---|
//! | `scan` | the scanner targets: whole against chunked scans |
//! | `input` | how the engine target's input decodes: the setup and the operations |
//! | `servers` | how the fuzzed servers answer what the engine sends them |
//! | `sentinels` | how the fuzzed sentinels answer, and the events they publish |
//! | `cluster` | how the fuzzed cluster's nodes answer: the slot map, and data commands bounced or not |
//! | `harness` | the engine target: its model of every connection and the checks of the contract |

mod cluster;
mod harness;
mod input;
mod scan;
mod sentinels;
mod servers;

pub use harness::{engine_admin, engine_client_bytes, engine_cluster, engine_sentinel};
pub use scan::{resp_reply, resp_request, tiny_limits};

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Replays every committed corpus file (and crash regression) of the fuzz targets.
    #[test]
    fn fuzz_corpus_replays() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        type Target = fn(&[u8]);
        let targets: [(&str, Target); 6] = [
            ("resp_request", super::resp_request),
            ("resp_reply", super::resp_reply),
            ("engine_client_bytes", super::engine_client_bytes),
            ("engine_admin", super::engine_admin),
            ("engine_sentinel", super::engine_sentinel),
            ("engine_cluster", super::engine_cluster),
        ];
        let mut failures = Vec::new();
        for (name, target) in targets {
            let dir = root.join(name);
            let mut files: Vec<_> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|entry| entry.expect("a directory entry").path())
                .collect();
            files.sort();
            assert!(!files.is_empty(), "{} has no corpus", dir.display());
            for file in files {
                let data = std::fs::read(&file).expect("a corpus file");
                if std::panic::catch_unwind(|| target(&data)).is_err() {
                    failures.push(file.display().to_string());
                }
            }
        }
        assert!(failures.is_empty(), "corpus files that fail: {failures:#?}");
    }
}
