//! Several proxies in Sentinel mode against one Sentinel [`World`], on random schedules: Sentinel fails over (the
//! old master crashes, or stays up as a stale master that still takes writes), one sentinel may lag behind the
//! others or lie for good, crashed servers come back as stale masters, and each proxy is cut from some or all
//! sentinels and healed on its own. Every proxy writes every 20 ms; where each write lands, and when, is checked.
//!
//! # Invariants
//!
//! The test follows, for each proxy, whether it *hears the majority*: whether at least two of the three sentinels
//! it can reach name the master Sentinel has chosen. From that, each proxy has a standing ([`Standing`]):
//!
//! 1. A proxy that hears the majority lands writes only on that master, except up to [`SWITCH_MS`] after Sentinel
//!    switched and up to [`REGAIN_MS`] after it regained the majority or a cut of it healed.
//! 2. A proxy cut off from the majority (it hears fewer than two sentinels naming the master) lands no write at
//!    all past [`LOST_MS`] after it lost it: it keeps its master for `majority_lost_after`, then holds writes.
//!    "Lost it" is the last moment by which it could have heard two sentinels naming the master, each at some time
//!    of its own: the engine counts answers that came at different moments (each fresh for two check periods)
//!    towards one majority, and its bound from the older of the two, so a proxy that hears sentinel A until it
//!    is cut from it and sentinel B from just after may keep writing to the master both named. An answer counts
//!    by the server it names, whenever it came: a lagging sentinel that still named the old master when Sentinel
//!    failed back over to it had named the master all along.
//! 3. Hence once Sentinel has switched, two proxies land writes on two different masters only inside those
//!    windows; and no write ever lands on the server only the lying sentinel names.
//! 4. After everything heals, every proxy routes to Sentinel's master within [`LIVENESS_MS`] and every write it is
//!    sent from then on lands there.
//!
//! The same schedules run against one proxy made of a deciding engine and [`WORKERS`] workers
//! ([`World::with_workers`]): the decider is the one that is cut from sentinels, every worker's client writes, and
//! each worker's writes are held to the proxy's standing.

use super::sentinel_world::{Client, Cut, World, MAJORITY_LOST_AFTER_MS, STEP_MS};
use crate::testkit::FakeServer;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::time::Duration;

const SET: &[u8] = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n";
const PROXIES: usize = 3;
/// The worker engines of the one proxy of the schedules run with workers.
const WORKERS: usize = 3;
const SENTINELS: u16 = 3;
/// The proxies' `check_period`: how often they ask the sentinels (every 100 ms while a change is under way).
const CHECK_PERIOD_MS: u64 = 200;
/// How often each proxy's client writes.
const WRITE_EVERY_MS: u64 = 20;
/// The sentinel that lies (when the schedule has a liar), and the server it names: a master of another setup,
/// which takes writes.
const LIAR: u16 = 26002;
const LIAR_MASTER: u16 = 7009;
const SERVERS: [u16; 3] = [7000, 7001, 7002];

/// Invariant 1, after a switch: a proxy with live connections to a majority asks every sentinel at least once per
/// check period (`Sentinels::tick` schedules the next round at most `check_period` ahead), and its answers arrive
/// at once here; as soon as a majority of answers name another server, `sentinel::verdict` drops the old master
/// (writes are held until the new one confirms). The round fires at the first step of [`World::run`] after it is
/// due: one step of slack.
const SWITCH_MS: u64 = CHECK_PERIOD_MS + STEP_MS;

/// Invariant 1, after regaining the majority (a cut healed, or a lagging sentinel caught up): the worst case is a
/// connection that went quiet in a silent cut at C and stays quiet. The engine asks on it at its next round (by
/// C + check period), gives up on it at the first round more than 2 check periods after that question (the answer
/// is no longer fresh: `Sentinels::fresh_for`; by C + 4 check periods) and reconnects at once (a retry is due at
/// most once per check period, and it was opened before C); a reconnection that was itself refused or went quiet
/// during the cut is retried within 3 check periods the same way. C is before the heal, hence 4 check periods.
const REGAIN_MS: u64 = 4 * CHECK_PERIOD_MS + STEP_MS;

/// Invariant 2: the engine counts `majority_lost_after` from when the last answer it needed for its majority
/// arrived (`Sentinels::evaluate`), which is no later than the moment the proxy lost the majority. It stops
/// routing once that has passed and it has no majority any more, which it notices when the answers it holds are
/// no longer fresh (2 check periods after they came): whichever is later. The engine re-evaluates on every
/// timeout, so one step of slack.
const LOST_MS: u64 = max(MAJORITY_LOST_AFTER_MS, 2 * CHECK_PERIOD_MS) + STEP_MS;

/// Invariant 4: the majority regained within [`REGAIN_MS`], the named master is asked for its `INFO` at once
/// (and again every 100 ms): routed within a check period more.
const LIVENESS_MS: u64 = REGAIN_MS + CHECK_PERIOD_MS;

const fn max(a: u64, b: u64) -> u64 {
    if a > b {
        a
    } else {
        b
    }
}

/// One step of a schedule.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Sentinel fails over to server `to`: the old master stays up as a master when `old_stays_up` (Sentinel cannot
    /// reach it, the proxies can: the dangerous case), else it crashes. The honest sentinels but `lagging` (if set,
    /// and if the others still make a majority) name `to` from now on. Unless `promoted`, `to` still reports
    /// `role:slave` until a [`Step::Promote`] (a proxy probing it may get its INFO from before the promotion).
    Failover { to: u16, old_stays_up: bool, lagging: Option<u16>, promoted: bool },
    /// Sentinel's master reports `role:master`.
    Promote,
    /// A lagging sentinel catches up.
    CatchUp,
    /// Sentinel converts every other running server into a replica of its master.
    Demote,
    /// The crashed servers restart as masters, with their old configuration.
    Restart,
    /// Proxy `proxy` is cut from sentinel `sentinel`, or from all of them.
    Cut { proxy: usize, sentinel: Option<u16>, how: Cut },
    /// The cut of proxy `proxy` from sentinel `sentinel`, or from all of them, heals.
    Heal { proxy: usize, sentinel: Option<u16> },
    /// The sentinel on this port publishes a `+switch-master` (a prompt to ask again).
    Notify(u16),
    /// Time passes (ms), every proxy writing.
    Wait(u64),
}

fn step() -> impl Strategy<Value = Step> {
    let sentinel = 26000..26000 + SENTINELS;
    let how = prop_oneof![Just(Cut::Reset), Just(Cut::Silent)];
    prop_oneof![
        3 => (7000u16..7003, any::<bool>(), proptest::option::of(sentinel.clone()), proptest::bool::weighted(0.7))
            .prop_map(|(to, old_stays_up, lagging, promoted)| Step::Failover { to, old_stays_up, lagging, promoted }),
        1 => Just(Step::Promote),
        1 => Just(Step::CatchUp),
        1 => Just(Step::Demote),
        1 => Just(Step::Restart),
        4 => (0..PROXIES, proptest::option::weighted(0.8, sentinel.clone()), how)
            .prop_map(|(proxy, sentinel, how)| Step::Cut { proxy, sentinel, how }),
        3 => (0..PROXIES, proptest::option::weighted(0.8, sentinel.clone()))
            .prop_map(|(proxy, sentinel)| Step::Heal { proxy, sentinel }),
        1 => sentinel.prop_map(Step::Notify),
        5 => (10u64..3000).prop_map(Step::Wait),
    ]
}

/// Where a proxy stands, for the invariants: until when (ms) it may land writes elsewhere than on Sentinel's
/// master (while it hears the majority), or at all (once it lost it).
#[derive(Clone, Copy, Debug)]
enum Standing {
    Hears { excused_until: u64 },
    Lost { excused_until: u64 },
}

/// The test's side of a run: what Sentinel decided, and where each proxy stands.
struct Sim {
    world: World,
    clients: Vec<Client>,
    /// The master the honest sentinels chose last.
    master: u16,
    liar: bool,
    standings: Vec<Standing>,
    /// For each proxy and sentinel, the server the sentinel named the last time (ms) the proxy could reach it, and
    /// that time.
    heard: Vec<BTreeMap<u16, (u16, u64)>>,
    /// How many landings were checked.
    checked: usize,
    /// The proxies are one deciding engine (engine 0) and its workers.
    workers: bool,
}

impl Sim {
    fn new(liar: bool, workers: bool) -> Sim {
        let extra = format!(", \"check_period\": {CHECK_PERIOD_MS}, \"hold_ms\": 2000");
        let mut world = match workers {
            true => World::with_workers(SENTINELS as usize, WORKERS, &extra),
            false => World::new(PROXIES, SENTINELS as usize, &extra),
        };
        if liar {
            world.servers.insert(LIAR_MASTER, FakeServer::master(LIAR_MASTER));
            world.sentinels.get_mut(&LIAR).unwrap().master = Some(LIAR_MASTER);
        }
        let (proxies, serving) = match workers {
            true => (1, 1..WORKERS + 1),
            false => (PROXIES, 0..PROXIES),
        };
        let clients = serving.map(|engine| world.client(engine)).collect();
        // At the start no proxy has heard anything: they may route only once they hear the majority.
        let standings = vec![Standing::Hears { excused_until: REGAIN_MS }; proxies];
        let heard = vec![BTreeMap::new(); proxies];
        Sim { world, clients, master: 7000, liar, standings, heard, checked: 0, workers }
    }

    /// How many proxies there are: with workers, one.
    fn proxies(&self) -> usize {
        self.standings.len()
    }

    /// The proxy engine `engine` belongs to (with workers, the decider's: 0).
    fn proxy_of(&self, engine: usize) -> usize {
        if self.workers {
            0
        } else {
            engine
        }
    }

    fn honest(&self, sentinel: u16) -> bool {
        !(self.liar && sentinel == LIAR)
    }

    /// Whether proxy `proxy` can reach at least two sentinels that name Sentinel's master.
    fn hears(&self, proxy: usize) -> bool {
        let naming = self
            .world
            .sentinels
            .iter()
            .filter(|(port, s)| s.master == Some(self.master) && self.world.reaches(proxy, **port));
        naming.count() >= 2
    }

    /// Notes which server each sentinel a proxy reaches names now.
    fn note_heard(&mut self) {
        let now = self.world.clock.ms();
        for proxy in 0..self.proxies() {
            for (port, sentinel) in &self.world.sentinels {
                if let Some(named) = sentinel.master.filter(|_| self.world.reaches(proxy, *port)) {
                    self.heard[proxy].insert(*port, (named, now));
                }
            }
        }
    }

    /// Updates every proxy's standing after a step (which happens at one instant): Sentinel `switched`, or cuts of
    /// the proxies in `healed` healed.
    fn update(&mut self, switched: bool, healed: &[usize]) {
        let now = self.world.clock.ms();
        self.note_heard();
        for proxy in 0..self.proxies() {
            let hears = self.hears(proxy);
            // The bound from the last moment by which it had heard two sentinels naming the master.
            let mut times: Vec<u64> =
                self.heard[proxy].values().filter(|(named, _)| *named == self.master).map(|(_, at)| *at).collect();
            times.sort_unstable_by(|a, b| b.cmp(a));
            let lost_bound = times.get(1).map_or(0, |at| at + LOST_MS);
            self.standings[proxy] = match (self.standings[proxy], hears) {
                (Standing::Hears { excused_until }, true) => {
                    let switch = if switched { now + SWITCH_MS } else { 0 };
                    let heal = if healed.contains(&proxy) { now + REGAIN_MS } else { 0 };
                    Standing::Hears { excused_until: excused_until.max(switch).max(heal) }
                }
                // Under its bound it may still write to the master it kept, until it hears the majority.
                (Standing::Lost { excused_until }, true) => {
                    Standing::Hears { excused_until: excused_until.max(now + REGAIN_MS) }
                }
                (Standing::Hears { excused_until }, false) => {
                    Standing::Lost { excused_until: excused_until.max(now + LOST_MS) }
                }
                (Standing::Lost { excused_until }, false) => {
                    Standing::Lost { excused_until: excused_until.max(lost_bound) }
                }
            };
        }
    }

    /// Checks the writes that landed since the last check against the standings (invariants 1 to 3).
    fn check(&mut self) -> Result<(), TestCaseError> {
        for landing in &self.world.landings[self.checked..] {
            let (at, port, proxy) = (landing.at, landing.port, landing.proxy);
            prop_assert_ne!(port, LIAR_MASTER, "proxy {} wrote to the liar's master at {} ms", proxy, at);
            let ok = match self.standings[self.proxy_of(proxy)] {
                Standing::Hears { excused_until } => port == self.master || at <= excused_until,
                Standing::Lost { excused_until } => at <= excused_until,
            };
            prop_assert!(
                ok,
                "proxy {} wrote to {} at {} ms; Sentinel's master {}, {:?}",
                proxy,
                port,
                at,
                self.master,
                self.standings[proxy]
            );
        }
        self.checked = self.world.landings.len();
        Ok(())
    }

    /// Lets `ms` pass, every proxy writing every [`WRITE_EVERY_MS`]; checks each step.
    fn wait(&mut self, ms: u64) -> Result<(), TestCaseError> {
        for _ in 0..ms / STEP_MS {
            if self.world.clock.ms() % WRITE_EVERY_MS == 0 {
                for client in self.clients.clone() {
                    self.world.send(client, SET);
                }
            }
            self.world.run(Duration::from_millis(STEP_MS));
            self.check()?;
        }
        Ok(())
    }

    fn apply(&mut self, step: Step) -> Result<(), TestCaseError> {
        // Until this step, the network was as the last one left it.
        self.note_heard();
        let (mut switched, mut healed) = (false, Vec::new());
        match step {
            Step::Failover { to, old_stays_up, lagging, promoted }
                if to != self.master && !self.world.down.contains(&to) =>
            {
                let old = self.master;
                if !old_stays_up {
                    self.world.kill(old);
                }
                if promoted {
                    self.world.set_role(to, None);
                }
                for port in SERVERS {
                    if port != to && (port != old || !old_stays_up) {
                        self.world.set_role(port, Some(to));
                    }
                }
                // A sentinel may lag only if the other honest ones are a majority.
                let lagging = lagging.filter(|_| !self.liar);
                let replicas: Vec<_> = SERVERS.into_iter().filter(|p| *p != to).map(|p| (p, "slave", "ok")).collect();
                for port in 26000..26000 + SENTINELS {
                    if self.honest(port) && Some(port) != lagging {
                        let sentinel = self.world.sentinels.get_mut(&port).unwrap();
                        sentinel.master = Some(to);
                        sentinel.replicas = replicas.clone();
                    }
                }
                self.master = to;
                switched = true;
            }
            Step::Failover { .. } => {}
            Step::Promote => self.world.set_role(self.master, None),
            Step::CatchUp => self.catch_up(),
            Step::Demote => self.demote(),
            Step::Restart => {
                for port in std::mem::take(&mut self.world.down) {
                    self.world.servers.insert(port, FakeServer::master(port));
                }
            }
            Step::Cut { proxy, sentinel, how } => {
                let proxy = self.proxy_of(proxy);
                for port in sentinel.map_or(26000..26000 + SENTINELS, |s| s..s + 1) {
                    self.world.cut(proxy, port, how);
                }
            }
            Step::Heal { proxy, sentinel } => {
                let proxy = self.proxy_of(proxy);
                for port in sentinel.map_or(26000..26000 + SENTINELS, |s| s..s + 1) {
                    self.world.heal(proxy, port);
                }
                healed.push(proxy);
            }
            Step::Notify(port) => self.world.publish(port, "+switch-master", "mymaster"),
            Step::Wait(ms) => self.wait(ms)?,
        }
        self.update(switched, &healed);
        self.check()
    }

    /// Every honest sentinel names Sentinel's master.
    fn catch_up(&mut self) {
        for port in 26000..26000 + SENTINELS {
            if self.honest(port) {
                let master = self.master;
                let sentinel = self.world.sentinels.get_mut(&port).unwrap();
                if sentinel.master != Some(master) {
                    sentinel.master = Some(master);
                    sentinel.replicas =
                        SERVERS.into_iter().filter(|p| *p != master).map(|p| (p, "slave", "ok")).collect();
                }
            }
        }
    }

    /// Every running server but Sentinel's master becomes its replica.
    fn demote(&mut self) {
        for port in SERVERS {
            if port != self.master && !self.world.down.contains(&port) {
                self.world.set_role(port, Some(self.master));
            }
        }
    }

    /// Heals everything (the liar goes on lying) and checks invariant 4.
    fn heal_and_check_liveness(&mut self) -> Result<(), TestCaseError> {
        for proxy in 0..self.proxies() {
            for port in 26000..26000 + SENTINELS {
                self.world.heal(proxy, port);
            }
        }
        self.catch_up();
        self.world.set_role(self.master, None);
        self.demote();
        self.update(false, &(0..self.proxies()).collect::<Vec<_>>());
        self.wait(LIVENESS_MS)?;
        for engine in 0..self.world.proxies.len() {
            prop_assert_eq!(self.world.master_port(engine), Some(self.master), "engine {}", engine);
        }
        let from = self.world.landings.len();
        self.wait(10 * WRITE_EVERY_MS)?;
        for client in &self.clients {
            let engine = client.engine();
            let writes: Vec<u16> =
                self.world.landings[from..].iter().filter(|l| l.proxy == engine).map(|l| l.port).collect();
            prop_assert!(writes.len() >= 10, "engine {} landed {:?}", engine, writes);
            prop_assert!(writes.iter().all(|port| *port == self.master), "engine {} landed {:?}", engine, writes);
        }
        Ok(())
    }
}

/// How many schedules the property test tries: 128, or `PROPTEST_CASES` for a longer search by hand
/// (`PROPTEST_CASES=20000 cargo test --release -p redis-proxy-engine sentinel_sim`).
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(128)
}

fn run_schedule(steps: &[Step], liar: bool, workers: bool) -> Result<(), TestCaseError> {
    let mut sim = Sim::new(liar, workers);
    sim.wait(500)?;
    for &step in steps {
        sim.apply(step)?;
    }
    sim.heal_and_check_liveness()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Invariants 1 to 4 of the module documentation, on random schedules.
    #[test]
    fn proxies_following_sentinel_never_write_to_two_masters_past_the_bounds(
        steps in proptest::collection::vec(step(), 1..30),
        liar in any::<bool>(),
    ) {
        run_schedule(&steps, liar, false)?;
    }

    /// The same, against one proxy of a deciding engine and its workers.
    #[test]
    fn a_decider_following_sentinel_keeps_its_workers_within_the_same_bounds(
        steps in proptest::collection::vec(step(), 1..30),
        liar in any::<bool>(),
    ) {
        run_schedule(&steps, liar, true)?;
    }
}

/// Found by CI: proxy 1, cut from sentinel 26000, still hears the lagging 26002 name the old master 7000; it is cut
/// from 26002 at the instant Sentinel fails back over to 7000, and 26001 names 7000 at once. The engine counts
/// 26002's last answer (7000, still fresh) and 26001's towards one majority and keeps writing to 7000 until
/// `majority_lost_after` past the older of the two: 26002's answer named the new master, so it counts although
/// it came before the switch.
#[test]
fn regression_a_lagging_sentinels_answer_counts_once_sentinel_fails_over_to_the_server_it_named() {
    let steps = [
        Step::Failover { to: 7001, old_stays_up: true, lagging: Some(26002), promoted: false },
        Step::Cut { proxy: 1, sentinel: Some(26000), how: Cut::Reset },
        Step::Wait(160),
        Step::Cut { proxy: 1, sentinel: Some(26002), how: Cut::Silent },
        Step::Failover { to: 7000, old_stays_up: false, lagging: None, promoted: false },
        Step::Wait(2870),
    ];
    run_schedule(&steps, false, false).unwrap();
}
