//! `workers` above 1: the thread that decides and the worker threads, and what passes between them. The deciding
//! thread runs the deciding engine (probes, failover, the admin and status listeners, the signals) and accepts the
//! clients, which it hands to the workers in turn; each worker thread runs a worker engine over its own clients.
//! Between them pass only the topology the decider publishes, the epoch each worker confirms, the clients, the
//! workers' status, and requests to reload or shut down; each side is woken by a `mio::Waker`. Nothing here
//! decides: the engines do.

use crate::board::Board;
use mio::net::TcpStream;
use mio::{Poll, Token, Waker};
use redis_proxy_engine::{Config, Engine, StatusSnapshot, Topology};
use redis_proxy_runtime_common::tls::Entry;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The token of a thread's waker.
pub(crate) const WAKER: Token = Token(usize::MAX - 5);
/// How often a busy worker reports its status to the decider at most, unasked (for the trend and `PROXY STATUS`).
const STATUS_EVERY: Duration = Duration::from_millis(250);
/// How long the status page waits for every worker's fresh status (a worker inside a long turn answers late; its
/// last report is used then).
const STATUS_WAIT: Duration = Duration::from_millis(100);

/// A client the decider accepted for a worker.
pub(crate) struct Handoff {
    pub(crate) stream: TcpStream,
    pub(crate) peer: SocketAddr,
    pub(crate) entry: Entry,
}

/// What the decider leaves for one worker until it wakes.
#[derive(Default)]
struct Inbox {
    clients: Vec<Handoff>,
    reload: bool,
    shutdown: bool,
}

/// One worker's side of what is shared.
struct Link {
    waker: Waker,
    inbox: Mutex<Inbox>,
    /// The worker's status, when it has a newer one than the decider took, with the round it answers.
    status: Mutex<Option<(u64, StatusSnapshot)>>,
}

/// What the decider and its workers share.
pub(crate) struct Shared {
    /// The decider's last publication and the epochs the workers confirmed.
    board: Board<Topology>,
    decider: Waker,
    links: Vec<Link>,
    /// A worker's client asked for `PROXY RELOAD`: the decider reloads, and then every worker.
    reload_asked: AtomicBool,
    /// Workers whose loop has ended.
    finished: AtomicUsize,
    /// The status page's requests for fresh status: each worker answers the latest round when woken.
    status_round: AtomicU64,
    /// Signalled when a worker has put its status in (the decider waits on it, with the `status` mutexes).
    status_in: (Mutex<()>, Condvar),
}

/// Locks `mutex`, also after a thread panicked while holding it (what it guards stays usable: plain data).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What part a thread's event loop plays.
pub(crate) enum Role {
    /// The only thread (`workers: 1`).
    Alone,
    /// The deciding thread of `workers` worker threads.
    Decider {
        shared: Arc<Shared>,
        /// The worker the next client goes to.
        next: usize,
        /// The least confirmation handed to the engine so far.
        told: u64,
    },
    /// Worker `index`.
    Worker {
        shared: Arc<Shared>,
        index: usize,
        /// The epoch it last reported confirmed.
        confirmed: u64,
        /// When it last reported its status, and whether anything happened since.
        status_at: Instant,
        busy: bool,
        /// The last round of the status page's requests it answered.
        answered: u64,
    },
}

/// A worker thread, ready to run: its poller (whose waker is shared), its engine and its place.
pub(crate) struct WorkerStart {
    pub(crate) poll: Poll,
    pub(crate) engine: Engine,
    pub(crate) role: Role,
}

/// Makes the deciding engine for `config` and `config.workers` worker engines that follow it; `decider_poll` is
/// the deciding thread's poller.
pub(crate) fn assemble(config: &Config, decider_poll: &Poll) -> io::Result<(Engine, Role, Vec<WorkerStart>)> {
    let now = Instant::now();
    let mut decider = Engine::new_decider(config.clone(), now).map_err(io::Error::other)?;
    let first = decider.poll_topology().ok_or_else(|| io::Error::other("the deciding engine published nothing"))?;
    let mut polls = Vec::new();
    let mut links = Vec::new();
    for _ in 0..config.workers {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let link = Link { waker, inbox: Mutex::default(), status: Mutex::default() };
        polls.push(poll);
        links.push(link);
    }
    let shared = Arc::new(Shared {
        board: Board::new(first.clone(), config.workers),
        decider: Waker::new(decider_poll.registry(), WAKER)?,
        links,
        reload_asked: AtomicBool::new(false),
        finished: AtomicUsize::new(0),
        status_round: AtomicU64::new(0),
        status_in: (Mutex::new(()), Condvar::new()),
    });
    let share = config.worker_share();
    let mut workers = Vec::new();
    for (index, poll) in polls.into_iter().enumerate() {
        let engine = Engine::new_worker(share.clone(), now, &first).map_err(io::Error::other)?;
        let role =
            Role::Worker { shared: shared.clone(), index, confirmed: 0, status_at: now, busy: false, answered: 0 };
        workers.push(WorkerStart { poll, engine, role });
    }
    Ok((decider, Role::Decider { shared, next: 0, told: 0 }, workers))
}

impl Role {
    /// The decider hands a client to the next worker in turn (Some: kept here, as `Alone` or for the admin
    /// listener).
    pub(crate) fn hand_off(&mut self, client: Handoff) -> Option<Handoff> {
        let Role::Decider { shared, next, .. } = self else { return Some(client) };
        if client.entry == Entry::Admin {
            return Some(client);
        }
        let link = &shared.links[*next % shared.links.len()];
        *next = next.wrapping_add(1);
        lock(&link.inbox).clients.push(client);
        let _ = link.waker.wake();
        None
    }

    /// After a turn of the loop: the decider publishes a new topology to every worker; a worker reports the epoch
    /// it confirms (waking the decider when it grew) and, now and then, its status.
    pub(crate) fn after_turn(&mut self, engine: &mut Engine, now: Instant) {
        match self {
            Role::Alone => {}
            Role::Decider { shared, .. } => {
                let mut newest = None;
                while let Some(topology) = engine.poll_topology() {
                    newest = Some(topology);
                }
                if let Some(topology) = newest {
                    shared.board.publish(topology);
                    for link in &shared.links {
                        let _ = link.waker.wake();
                    }
                }
            }
            Role::Worker { shared, index, confirmed, status_at, busy, answered } => {
                let link = &shared.links[*index];
                let epoch = engine.confirmed_epoch();
                if epoch > *confirmed {
                    *confirmed = epoch;
                    shared.board.confirm(*index, epoch);
                    let _ = shared.decider.wake();
                }
                *busy = true;
                if now.saturating_duration_since(*status_at) >= STATUS_EVERY {
                    let round = shared.status_round.load(Ordering::Acquire);
                    report_status(shared, link, round, engine, now);
                    (*status_at, *busy, *answered) = (now, false, round);
                }
            }
        }
    }

    /// When this thread must wake even without I/O: a worker whose status changed since it last reported it.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match self {
            Role::Worker { status_at, busy: true, .. } => Some(*status_at + STATUS_EVERY),
            _ => None,
        }
    }

    /// The thread's waker fired. The decider takes the workers' confirmations and status; a worker takes the
    /// newest topology, its new clients, and requests to reload or shut down.
    pub(crate) fn woken(&mut self, engine: &mut Engine, now: Instant) -> Woken {
        let mut woken = Woken::default();
        match self {
            Role::Alone => {}
            Role::Decider { shared, told, .. } => {
                let least = shared.board.least_confirmed();
                if least > *told {
                    *told = least;
                    engine.workers_confirmed(now, least);
                }
                woken.reload = shared.reload_asked.swap(false, Ordering::AcqRel);
            }
            Role::Worker { shared, index, status_at, busy, answered, .. } => {
                engine.follow(now, &shared.board.latest());
                let link = &shared.links[*index];
                let round = shared.status_round.load(Ordering::Acquire);
                if round > *answered {
                    report_status(shared, link, round, engine, now);
                    (*status_at, *busy, *answered) = (now, false, round);
                }
                let inbox = std::mem::take(&mut *lock(&shared.links[*index].inbox));
                woken.clients = inbox.clients;
                woken.reload = inbox.reload;
                woken.shutdown = inbox.shutdown;
            }
        }
        woken
    }

    /// The decider takes the status each worker reported since (into its engine's status).
    pub(crate) fn gather_status(&self, engine: &mut Engine) {
        let Role::Decider { shared, .. } = self else { return };
        for (index, link) in shared.links.iter().enumerate() {
            if let Some((_, status)) = lock(&link.status).take() {
                engine.worker_status(index, status);
            }
        }
    }

    /// The decider asks every worker for its status now and waits for the answers (at most [`STATUS_WAIT`]), so
    /// that the status page counts what the clients were just answered.
    pub(crate) fn fresh_status(&self, engine: &mut Engine) {
        let Role::Decider { shared, .. } = self else { return };
        let round = shared.status_round.fetch_add(1, Ordering::AcqRel) + 1;
        for link in &shared.links {
            let _ = link.waker.wake();
        }
        let deadline = Instant::now() + STATUS_WAIT;
        let (mutex, signal) = &shared.status_in;
        let mut guard = lock(mutex);
        loop {
            let answered = shared.links.iter().all(|l| lock(&l.status).as_ref().is_some_and(|(r, _)| *r >= round));
            let left = deadline.saturating_duration_since(Instant::now());
            if answered || left.is_zero() {
                break;
            }
            guard = signal.wait_timeout(guard, left).map_or_else(|p| p.into_inner().0, |(g, _)| g);
        }
        drop(guard);
        self.gather_status(engine);
    }

    /// A reload was applied on the decider: every worker reloads too. On a worker, a client's `PROXY RELOAD` is
    /// passed to the decider, which reloads first. Returns whether this thread reloads itself now.
    pub(crate) fn reload_requested(&self) -> bool {
        match self {
            Role::Alone | Role::Decider { .. } => true,
            Role::Worker { shared, .. } => {
                shared.reload_asked.store(true, Ordering::Release);
                let _ = shared.decider.wake();
                false
            }
        }
    }

    /// The decider reloaded: every worker re-reads the file too.
    pub(crate) fn reloaded(&self) {
        if let Role::Decider { shared, .. } = self {
            for link in &shared.links {
                lock(&link.inbox).reload = true;
                let _ = link.waker.wake();
            }
        }
    }

    /// The decider begins a shutdown: so does every worker.
    pub(crate) fn shut_down_workers(&self) {
        if let Role::Decider { shared, .. } = self {
            for link in &shared.links {
                lock(&link.inbox).shutdown = true;
                let _ = link.waker.wake();
            }
        }
    }

    /// Whether every worker's loop has ended (always, for the other roles).
    pub(crate) fn workers_finished(&self) -> bool {
        match self {
            Role::Decider { shared, .. } => shared.finished.load(Ordering::Acquire) == shared.links.len(),
            _ => true,
        }
    }

    /// A worker's loop ended: the decider may finish once every worker's has.
    pub(crate) fn finished(&self) {
        if let Role::Worker { shared, .. } = self {
            shared.finished.fetch_add(1, Ordering::AcqRel);
            let _ = shared.decider.wake();
        }
    }

    /// The part a worker engine has of `config`, for a reload (the whole of it otherwise).
    pub(crate) fn part(&self, config: Config) -> Config {
        match self {
            Role::Worker { .. } => config.worker_share(),
            _ => config,
        }
    }
}

/// Worker `link` puts its status in, answering `round` of the status page's requests.
fn report_status(shared: &Shared, link: &Link, round: u64, engine: &Engine, now: Instant) {
    *lock(&link.status) = Some((round, engine.status(now)));
    let (mutex, signal) = &shared.status_in;
    let _guard = lock(mutex);
    signal.notify_all();
}

/// What a worker's waker brought.
#[derive(Default)]
pub(crate) struct Woken {
    pub(crate) clients: Vec<Handoff>,
    pub(crate) reload: bool,
    pub(crate) shutdown: bool,
}
