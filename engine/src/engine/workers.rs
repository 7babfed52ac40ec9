//! Many workers, one decision: the deciding engine publishes the servers as it sees them ([`Topology`]) and
//! hears which epoch every worker confirmed; a worker engine follows what it is handed instead of deciding.

use super::*;
use crate::publication::{Publisher, Topology};

impl Engine {
    /// An engine that decides for worker engines: it probes the servers, applies the failover rules and sends
    /// `REPLICAOF` (or follows the sentinels, or reads the cluster's slot map) as [`Engine::new`] does, and
    /// [`Engine::poll_topology`] hands out what the workers follow. It serves the admin listener; data clients
    /// belong on the workers.
    pub fn new_decider(config: Config, now: Instant) -> Result<Engine, String> {
        let mut engine = Engine::new(config, now);
        engine.publisher = Some(Box::default());
        Ok(engine)
    }

    /// A worker engine: it serves clients as [`Engine::new`] does, but it neither probes nor decides (nor asks the
    /// sentinels, nor reads the cluster's slot map): it routes by the `topology` its decider published, and by
    /// each later one handed to [`Engine::follow`]. `config` is the worker's share ([`Config::worker_share`]).
    pub fn new_worker(config: Config, now: Instant, topology: &Topology) -> Result<Engine, String> {
        if config.sentinel.is_some() {
            return Err("a worker engine follows its decider, not the sentinels: give it `Config::worker_share`".into());
        }
        let mut engine = Engine::new(config, now);
        engine.monitor.make_passive();
        if let Some(cluster) = engine.cluster.as_deref_mut() {
            cluster.make_passive();
        }
        engine.following = Some(Box::default());
        engine.follow(now, topology);
        Ok(engine)
    }

    /// A deciding engine: the topology to hand to every worker, when it changed since the last one (call it after
    /// every input, as [`Engine::poll_action`]). A different master is handed out only once every worker has
    /// confirmed the topology that took the old one away ([`Engine::workers_confirmed`]).
    #[must_use]
    pub fn poll_topology(&mut self) -> Option<Topology> {
        let switching_from = self.failover.switching().map(|(master, _)| master);
        let cluster = self.cluster.as_deref();
        self.publisher.as_mut()?.next(self.monitor.views(), self.failover.master(), switching_from, cluster)
    }

    /// A worker engine in cluster mode: whether it wants a fresh slot map (a `MOVED`, a lost connection,
    /// `CLUSTERDOWN`, a node it does not know yet) since this was last asked. Hand it to the deciding engine
    /// ([`Engine::refresh_cluster_map`]). Call it after every input, as [`Engine::poll_action`].
    #[must_use]
    pub fn cluster_refresh_wanted(&mut self) -> bool {
        self.cluster.as_deref_mut().is_some_and(Cluster::take_refresh_wanted)
    }

    /// A deciding engine in cluster mode: a worker wants a fresh slot map; one is read as soon as the gap between
    /// refreshes allows (they are coalesced).
    pub fn refresh_cluster_map(&mut self, now: Instant) {
        let Some(cluster) = self.cluster.as_deref_mut() else { return };
        cluster.want_refresh();
        self.cluster_tick(now);
    }

    /// A deciding engine: every worker has confirmed `epoch` (the least of their [`Engine::confirmed_epoch`]s).
    /// A new master may be handed out now, and a planned switchover may go on.
    pub fn workers_confirmed(&mut self, now: Instant, epoch: u64) {
        let Some(publisher) = self.publisher.as_mut() else { return };
        publisher.confirmed(epoch);
        self.advance_switchover(now);
    }

    /// A deciding engine: worker `worker` (numbered from 0) reported its status (its [`Engine::status`]); from
    /// now on this engine's status adds it (its clients, counters and connections), so that the status page,
    /// the metrics and `PROXY STATUS` describe the whole proxy.
    pub fn worker_status(&mut self, worker: usize, snapshot: StatusSnapshot) {
        if self.publisher.is_none() {
            return;
        }
        if self.workers_status.len() <= worker {
            self.workers_status.resize_with(worker + 1, || None);
        }
        self.workers_status[worker] = Some(snapshot);
    }

    /// A worker engine: routes by `topology` from now on (an older one than the last is ignored). Servers it did
    /// not know are added, those gone are closed, a server gone down has its requests in flight failed, and a
    /// master taken away (not by a planned switchover) has them failed too, as one engine does when it loses its
    /// master. In cluster mode, a new version of the slot map is adopted.
    pub fn follow(&mut self, now: Instant, topology: &Topology) {
        if !self.following.as_ref().is_some_and(|f| f.is_new(topology)) {
            return;
        }
        let old_master = self.failover.master();
        let views = self.monitor.views();
        let newly_down: Vec<ServerId> = topology
            .views
            .iter()
            .filter(|(id, v)| v.is_down() && views.get(*id).is_some_and(|local| !local.is_down()))
            .map(|(id, _)| id)
            .collect();
        let (added, gone) = self.monitor.adopt(&topology.views);
        for server in added {
            let Some(address) = self.monitor.address(server).cloned() else { continue };
            let auth = self.config.server_credentials(&address).and_then(auth::auth_request);
            self.pool.add_server(server, address, auth);
        }
        for server in gone {
            self.close_backends_of(now, server, false, "server removed");
            self.pool.remove_server(server);
            self.failover.remove_server(server);
        }
        for server in newly_down {
            self.close_backends_of(now, server, false, "server is down");
        }
        let master = self.following.as_mut().and_then(|f| f.master_of(topology));
        let master = master.filter(|m| self.monitor.views().contains(*m));
        if master != old_master {
            if let Some(old) = old_master.filter(|old| topology.switching_from != Some(*old)) {
                // Requests in flight on the old master get errors now rather than hanging (a planned switchover
                // lets them finish: it waits for them).
                self.close_backends_of(now, old, true, "master lost");
            }
            self.failover.follow(master, now);
            self.master_since = master.map(|_| now);
            self.waits.follow_master(self.monitor.views(), master);
        }
        if let Some(following) = self.following.as_mut() {
            following.applied(topology, old_master.filter(|_| master != old_master));
        }
        if let (Some(cluster), Some(published)) = (self.cluster.as_deref_mut(), topology.cluster.as_deref()) {
            if cluster.adopt(published) {
                self.place_shard_batches(now);
            }
        }
        self.run_all_held(now);
        self.after_replies(now);
        self.release_departed();
    }

    /// A worker engine: the greatest epoch it confirms, to report to its decider (0 for any other engine). It
    /// confirms an epoch once it follows it and, if that took its master away, once none of its requests is in
    /// flight to the old master any more. Call it after every input, as [`Engine::poll_action`].
    #[must_use]
    pub fn confirmed_epoch(&mut self) -> u64 {
        let Some(letting_go) = self.following.as_ref().map(|f| f.letting_go()) else { return 0 };
        let in_flight = letting_go.map_or(0, |old| self.pool.in_flight(old));
        self.following.as_mut().map_or(0, |f| f.confirm(in_flight))
    }

    /// A worker engine refuses the admin commands that change the servers: its decider carries them out.
    pub(super) fn refuse_on_worker(&self, command: &str) -> Result<(), String> {
        match self.is_worker() {
            true => {
                Err(format!("ERR {command} is carried out by the admin listener: one engine decides for the workers"))
            }
            false => Ok(()),
        }
    }

    /// A worker engine decides one thing alone: it stops writing to a master it saw gone (a refused connection)
    /// at once, as one engine does, rather than wait for its decider to see it too.
    pub(super) fn drop_master_seen_down(&mut self, now: Instant) {
        let Some(master) = self.failover.master() else { return };
        if !self.monitor.views().get(master).is_some_and(|v| v.is_down()) {
            return;
        }
        if let Some(following) = self.following.as_mut() {
            following.drop_master(master, now);
        }
        self.failover.follow(None, now);
        self.close_backends_of(now, master, true, "master lost");
        self.waits.follow_master(self.monitor.views(), None);
    }

    /// Whether this engine follows a decider instead of deciding.
    pub(super) fn is_worker(&self) -> bool {
        self.following.is_some()
    }

    /// A deciding engine: whether a worker may still send to the master that a planned switchover moves away
    /// from (so its offset cannot be read as final yet).
    pub(super) fn workers_letting_go(&self) -> bool {
        self.publisher.as_deref().is_some_and(Publisher::letting_go)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Class, Target};
    use crate::testkit::{config, connects, master_and_replicas, sent_on, Driver};

    #[test]
    fn a_worker_routes_by_its_deciders_topology_without_probing_and_the_decider_counts_its_requests() {
        let config = config(2);
        let mut decider = Driver::decider_with_master(config.clone());
        let clock = decider.clock;
        let (mut worker, topology) = decider.new_worker();
        assert!(decider.engine.poll_topology().is_none(), "nothing changed since");
        assert_eq!(worker.engine.master(), Some(&config.servers[0]), "the worker routes as published");
        assert_eq!(worker.engine.confirmed_epoch(), topology.epoch());
        let client = worker.accept();
        worker.feed(client, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
        let actions = worker.drain();
        let [(shared, address)] = &connects(&actions)[..] else { panic!("one data connection: {actions:?}") };
        assert_eq!(address, &config.servers[0], "to the master, and no probe connection");
        worker.connected(*shared);
        worker.feed(*shared, b"$1\r\nv\r\n");
        assert_eq!(sent_on(&worker.drain(), client), b"$1\r\nv\r\n");
        worker.advance(config.check_period * 5);
        assert!(connects(&worker.drain()).is_empty(), "a worker never probes");

        let now = clock.now();
        decider.engine.worker_status(0, worker.engine.status(now));
        let status = decider.engine.status(now);
        assert_eq!(status.clients, 1);
        assert_eq!(status.counters.requests[Target::Master as usize][Class::Read as usize], 1);
        assert_eq!(status.servers[0].connections.shared, 1, "the worker's connection is counted");
    }

    /// A planned switchover waits for a worker whose blocking command is in flight to the master; when it is
    /// aborted at its bound, the master is handed out again at once, though that worker never confirmed.
    #[test]
    fn an_aborted_switchover_hands_the_master_back_without_waiting_for_a_blocked_worker() {
        let config = config(2);
        let mut decider = Driver::decider_with_master(config.clone());
        let clock = decider.clock;
        let mut servers = master_and_replicas(&config.servers);
        let (mut worker, first) = decider.new_worker();
        let blocked = worker.accept();
        worker.feed(blocked, b"*3\r\n$5\r\nBLPOP\r\n$1\r\nq\r\n$1\r\n0\r\n");
        let actions = worker.drain();
        let [(private, _)] = &connects(&actions)[..] else { panic!("a private connection: {actions:?}") };
        worker.connected(*private);
        worker.drain();
        decider.engine.workers_confirmed(clock.now(), worker.engine.confirmed_epoch());

        let admin = decider.engine.accept_admin(clock.now(), "127.0.0.1:40000".parse().expect("an address"));
        let target = format!("127.0.0.1:{}", config.servers[1].port);
        let failover = format!("*3\r\n$5\r\nPROXY\r\n$8\r\nFAILOVER\r\n${}\r\n{target}\r\n", target.len());
        decider.feed(admin, failover.as_bytes());
        decider.drain();
        let holding = decider.engine.poll_topology().expect("writes are held");
        assert_eq!(holding.master, None);
        worker.engine.follow(clock.now(), &holding);
        assert_eq!(worker.engine.confirmed_epoch(), first.epoch(), "its BLPOP is still in flight to the master");

        // Past the switchover's bound (hold_ms / 2), answering probes all along: aborted, nothing promoted.
        for _ in 0..10 {
            decider.advance(config.check_period);
            let actions = decider.probe_round(&mut servers);
            let promoted = actions
                .iter()
                .any(|a| matches!(a, Action::Send { data, .. } if data.windows(9).any(|w| w == b"REPLICAOF")));
            assert!(!promoted, "no promotion while a worker may still write to the master");
        }
        assert_eq!(decider.engine.master(), Some(&config.servers[0]), "the switchover was aborted");
        let back = decider.engine.poll_topology().expect("the master is handed out again");
        assert_eq!(back.master, holding.views.ids().first().copied());
        worker.engine.follow(clock.now(), &back);
        assert_eq!(worker.engine.master(), Some(&config.servers[0]), "the worker writes again");
        assert_eq!(worker.engine.confirmed_epoch(), back.epoch());
    }
}
