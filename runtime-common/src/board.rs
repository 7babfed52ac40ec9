//! The board between the deciding thread and its workers: the last topology published, and the epoch each worker
//! has confirmed. Workers read the topology only when woken, never per request, so a mutex guards it; each
//! confirmation is an atomic the decider reads without a lock. With the `loom` feature it is built on loom's
//! primitives, and its model test checks every interleaving of a publication, the workers' confirmations and the
//! decider's reading.

#[cfg(feature = "loom")]
use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(feature = "loom")]
use loom::sync::{Arc, Mutex, MutexGuard};
#[cfg(not(feature = "loom"))]
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(feature = "loom"))]
use std::sync::{Arc, Mutex, MutexGuard};

/// The last publication of type `T`, and each worker's confirmation.
pub(crate) struct Board<T> {
    published: Mutex<Arc<T>>,
    confirmed: Vec<AtomicU64>,
}

/// Locks `mutex`, also after a thread panicked while holding it (what it guards is a plain value).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<T> Board<T> {
    /// A board for `workers` workers, holding `first`; no epoch confirmed yet.
    pub(crate) fn new(first: T, workers: usize) -> Board<T> {
        Board { published: Mutex::new(Arc::new(first)), confirmed: (0..workers).map(|_| AtomicU64::new(0)).collect() }
    }

    /// The decider publishes `topology` (the workers are woken to read it).
    pub(crate) fn publish(&self, topology: T) {
        *lock(&self.published) = Arc::new(topology);
    }

    /// The last publication, for a worker that was woken.
    pub(crate) fn latest(&self) -> Arc<T> {
        lock(&self.published).clone()
    }

    /// Worker `worker` confirms `epoch`. Release: whatever the worker did to follow the topology before it
    /// confirmed happens before the decider acts on the confirmation.
    pub(crate) fn confirm(&self, worker: usize, epoch: u64) {
        self.confirmed[worker].store(epoch, Ordering::Release);
    }

    /// The least epoch every worker has confirmed.
    pub(crate) fn least_confirmed(&self) -> u64 {
        self.confirmed.iter().map(|c| c.load(Ordering::Acquire)).min().unwrap_or(0)
    }
}

#[cfg(all(test, feature = "loom"))]
mod tests {
    use super::*;
    use loom::sync::atomic::AtomicBool;

    /// A publication: its epoch.
    struct Published {
        epoch: u64,
    }

    /// One publication after the first while two workers follow: whatever the interleaving, the decider never sees
    /// an epoch confirmed that some worker has not applied (what the worker did before confirming is visible to
    /// the decider once it reads the confirmation), and never an epoch that was not published.
    #[test]
    fn a_confirmation_is_seen_only_after_what_the_worker_did_to_follow() {
        loom::model(|| {
            let board = Arc::new(Board::new(Published { epoch: 1 }, 2));
            // Per worker: it closed its connections to the old master (what following epoch 2 means here).
            let let_go: Arc<Vec<AtomicBool>> = Arc::new((0..2).map(|_| AtomicBool::new(false)).collect());
            let workers: Vec<_> = (0..2)
                .map(|worker| {
                    let (board, let_go) = (board.clone(), let_go.clone());
                    loom::thread::spawn(move || {
                        let topology = board.latest();
                        if topology.epoch >= 2 {
                            let_go[worker].store(true, Ordering::Relaxed);
                        }
                        board.confirm(worker, topology.epoch);
                    })
                })
                .collect();
            board.publish(Published { epoch: 2 });
            let least = board.least_confirmed();
            assert!(least <= 2, "confirmed {least}, never published");
            if least >= 2 {
                for (worker, closed) in let_go.iter().enumerate() {
                    assert!(closed.load(Ordering::Relaxed), "worker {worker} confirmed epoch 2 before letting go");
                }
            }
            for worker in workers {
                worker.join().expect("a worker thread");
            }
        });
    }
}
