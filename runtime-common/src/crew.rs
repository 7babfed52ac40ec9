//! `workers` above 1: the loop that decides and the worker loops, and what passes between them, for every runtime.
//! The deciding loop runs the deciding engine (probes, failover, the admin and status listeners, the signals) and
//! accepts the clients, which it hands to the workers in turn; each worker loop runs a worker engine over its own
//! clients. Between them pass only the topology the decider publishes, the epoch each worker confirms, the clients,
//! the workers' status, and requests to reload or shut down; each side is woken by the other through its runtime's
//! own wake-up ([`Wake`]: a `mio::Waker`, a `tokio::sync::Notify`). Nothing here decides: the engines do.

use crate::board::Board;
use crate::tls::Entry;
use redis_proxy_engine::{Config, Engine, StatusSnapshot, Topology};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Wakes one loop (the decider's or a worker's) from another thread; the loop then calls [`Role::woken`].
pub type Wake = Box<dyn Fn() + Send + Sync>;

/// How often a busy worker reports its status to the decider at most, unasked (for the trend and `PROXY STATUS`).
const STATUS_EVERY: Duration = Duration::from_millis(250);
/// How long the status page waits for every worker's fresh status (a worker inside a long turn answers late; its
/// last report is used then).
const STATUS_WAIT: Duration = Duration::from_millis(100);

/// A client accepted by the decider, as the runtime's socket `S`, for a worker.
pub struct Handoff<S> {
    /// The accepted socket.
    pub stream: S,
    /// The client's address.
    pub peer: SocketAddr,
    /// The listener it came through.
    pub entry: Entry,
}

/// What the decider leaves for one worker until it wakes.
struct Inbox<S> {
    clients: Vec<Handoff<S>>,
    reload: bool,
    shutdown: bool,
}

impl<S> Default for Inbox<S> {
    fn default() -> Inbox<S> {
        Inbox { clients: Vec::new(), reload: false, shutdown: false }
    }
}

/// One worker's side of what is shared.
struct Link<S> {
    wake: Wake,
    inbox: Mutex<Inbox<S>>,
    /// The worker's status, when it has a newer one than the decider took, with the round it answers.
    status: Mutex<Option<(u64, StatusSnapshot)>>,
}

/// What the decider and its workers share.
pub struct Shared<S> {
    /// The decider's last publication and the epochs the workers confirmed.
    board: Board<Topology>,
    decider: Wake,
    links: Vec<Link<S>>,
    /// A worker's client asked for `PROXY RELOAD`: the decider reloads, and then every worker.
    reload_asked: AtomicBool,
    /// Cluster mode: a worker wants a fresh slot map (a `MOVED`, a node it does not know): the decider reads one.
    refresh_asked: AtomicBool,
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

/// What part a loop plays. Made by [`assemble`], or `Alone`; its fields are the loop's own bookkeeping.
pub enum Role<S> {
    /// The only loop (`workers: 1`).
    Alone,
    /// The deciding loop of `workers` worker loops.
    Decider {
        /// What it shares with the workers.
        shared: Arc<Shared<S>>,
        /// The worker the next client goes to.
        next: usize,
        /// The least confirmation handed to the engine so far.
        told: u64,
    },
    /// A worker loop.
    Worker {
        /// What it shares with the decider.
        shared: Arc<Shared<S>>,
        /// Which worker it is.
        index: usize,
        /// The epoch it last reported confirmed.
        confirmed: u64,
        /// When it last reported its status.
        status_at: Instant,
        /// Whether anything happened since.
        busy: bool,
        /// The last round of the status page's requests it answered.
        answered: u64,
    },
}

/// The engines of `workers` above 1, each with the part it plays.
pub struct Crew<S> {
    /// The deciding engine.
    pub decider: (Engine, Role<S>),
    /// The worker engines, in the order of the wake-ups given to [`assemble`].
    pub workers: Vec<(Engine, Role<S>)>,
}

/// Makes the deciding engine for `config` and one worker engine that follows it per wake-up in `workers` (as many
/// as `config.workers`); `decider` wakes the deciding loop.
pub fn assemble<S>(config: &Config, decider: Wake, workers: Vec<Wake>) -> io::Result<Crew<S>> {
    let now = Instant::now();
    let mut engine = Engine::new_decider(config.clone(), now).map_err(io::Error::other)?;
    let first = engine.poll_topology().ok_or_else(|| io::Error::other("the deciding engine published nothing"))?;
    let count = workers.len();
    let links =
        workers.into_iter().map(|wake| Link { wake, inbox: Mutex::default(), status: Mutex::default() }).collect();
    let shared = Arc::new(Shared {
        board: Board::new(first.clone(), count),
        decider,
        links,
        reload_asked: AtomicBool::new(false),
        refresh_asked: AtomicBool::new(false),
        finished: AtomicUsize::new(0),
        status_round: AtomicU64::new(0),
        status_in: (Mutex::new(()), Condvar::new()),
    });
    let share = config.worker_share();
    let mut workers = Vec::new();
    for index in 0..count {
        let engine = Engine::new_worker(share.clone(), now, &first).map_err(io::Error::other)?;
        let role =
            Role::Worker { shared: shared.clone(), index, confirmed: 0, status_at: now, busy: false, answered: 0 };
        workers.push((engine, role));
    }
    Ok(Crew { decider: (engine, Role::Decider { shared, next: 0, told: 0 }), workers })
}

impl<S> Role<S> {
    /// The decider hands a client to the next worker in turn (Some: kept here, as `Alone` or for the admin
    /// listener).
    pub fn hand_off(&mut self, client: Handoff<S>) -> Option<Handoff<S>> {
        let Role::Decider { shared, next, .. } = self else { return Some(client) };
        if client.entry == Entry::Admin {
            return Some(client);
        }
        let link = &shared.links[*next % shared.links.len()];
        *next = next.wrapping_add(1);
        lock(&link.inbox).clients.push(client);
        (link.wake)();
        None
    }

    /// After a turn of the loop: the decider publishes a new topology to every worker; a worker reports the epoch
    /// it confirms (waking the decider when it grew), its wish for a fresh slot map (cluster mode) and, now and
    /// then, its status.
    pub fn after_turn(&mut self, engine: &mut Engine) {
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
                        (link.wake)();
                    }
                }
            }
            Role::Worker { shared, index, confirmed, status_at, busy, answered } => {
                let link = &shared.links[*index];
                let epoch = engine.confirmed_epoch();
                if epoch > *confirmed {
                    *confirmed = epoch;
                    shared.board.confirm(*index, epoch);
                    (shared.decider)();
                }
                if engine.cluster_refresh_wanted() && !shared.refresh_asked.swap(true, Ordering::AcqRel) {
                    (shared.decider)();
                }
                *busy = true;
                // Read on a worker only: a lone loop (the hot path of `workers: 1`) reads no clock for this.
                let now = Instant::now();
                if now.saturating_duration_since(*status_at) >= STATUS_EVERY {
                    let round = shared.status_round.load(Ordering::Acquire);
                    report_status(shared, link, round, engine, now);
                    (*status_at, *busy, *answered) = (now, false, round);
                }
            }
        }
    }

    /// When this thread must wake even without I/O: a worker whose status changed since it last reported it.
    pub fn deadline(&self) -> Option<Instant> {
        match self {
            Role::Worker { status_at, busy: true, .. } => Some(*status_at + STATUS_EVERY),
            _ => None,
        }
    }

    /// The loop was woken ([`Wake`]). The decider takes the workers' confirmations, a wish for a fresh slot map
    /// and a reload one of their clients asked for; a worker takes the newest topology, its new clients, and
    /// requests to reload or shut down.
    pub fn woken(&mut self, engine: &mut Engine, now: Instant) -> Woken<S> {
        let mut woken = Woken { clients: Vec::new(), reload: false, shutdown: false };
        match self {
            Role::Alone => {}
            Role::Decider { shared, told, .. } => {
                let least = shared.board.least_confirmed();
                if least > *told {
                    *told = least;
                    engine.workers_confirmed(now, least);
                }
                woken.reload = shared.reload_asked.swap(false, Ordering::AcqRel);
                if shared.refresh_asked.swap(false, Ordering::AcqRel) {
                    engine.refresh_cluster_map(now);
                }
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
    pub fn gather_status(&self, engine: &mut Engine) {
        let Role::Decider { shared, .. } = self else { return };
        for (index, link) in shared.links.iter().enumerate() {
            if let Some((_, status)) = lock(&link.status).take() {
                engine.worker_status(index, status);
            }
        }
    }

    /// The decider asks every worker for its status now and waits for the answers (at most [`STATUS_WAIT`]), so
    /// that the status page counts what the clients were just answered.
    pub fn fresh_status(&self, engine: &mut Engine) {
        let Role::Decider { shared, .. } = self else { return };
        let round = shared.status_round.fetch_add(1, Ordering::AcqRel) + 1;
        for link in &shared.links {
            (link.wake)();
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
    pub fn reload_requested(&self) -> bool {
        match self {
            Role::Alone | Role::Decider { .. } => true,
            Role::Worker { shared, .. } => {
                shared.reload_asked.store(true, Ordering::Release);
                (shared.decider)();
                false
            }
        }
    }

    /// The decider reloaded: every worker re-reads the file too.
    pub fn reloaded(&self) {
        if let Role::Decider { shared, .. } = self {
            for link in &shared.links {
                lock(&link.inbox).reload = true;
                (link.wake)();
            }
        }
    }

    /// The decider begins a shutdown: so does every worker.
    pub fn shut_down_workers(&self) {
        if let Role::Decider { shared, .. } = self {
            for link in &shared.links {
                lock(&link.inbox).shutdown = true;
                (link.wake)();
            }
        }
    }

    /// Whether every worker's loop has ended (always, for the other roles).
    pub fn workers_finished(&self) -> bool {
        match self {
            Role::Decider { shared, .. } => shared.finished.load(Ordering::Acquire) == shared.links.len(),
            _ => true,
        }
    }

    /// A worker's loop ended: the decider may finish once every worker's has.
    pub fn finished(&self) {
        if let Role::Worker { shared, .. } = self {
            shared.finished.fetch_add(1, Ordering::AcqRel);
            (shared.decider)();
        }
    }

    /// The part a worker engine has of `config`, for a reload (the whole of it otherwise).
    pub fn part(&self, config: Config) -> Config {
        match self {
            Role::Worker { .. } => config.worker_share(),
            _ => config,
        }
    }
}

/// Worker `link` puts its status in, answering `round` of the status page's requests.
fn report_status<S>(shared: &Shared<S>, link: &Link<S>, round: u64, engine: &Engine, now: Instant) {
    *lock(&link.status) = Some((round, engine.status(now)));
    let (mutex, signal) = &shared.status_in;
    let _guard = lock(mutex);
    signal.notify_all();
}

/// What a wake-up brought.
pub struct Woken<S> {
    /// Clients the decider handed over.
    pub clients: Vec<Handoff<S>>,
    /// Re-read the configuration file: on a worker, the decider did; on the decider, a worker's client asked.
    pub reload: bool,
    /// Begin a shutdown (the decider did).
    pub shutdown: bool,
}
