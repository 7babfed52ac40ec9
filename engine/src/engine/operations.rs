//! Operating the proxy: the admin commands carried out, servers added and removed (by `PROXY ADD/REMOVE` or a
//! reload), the reload itself, and the planned switchover's steps.

use super::*;

impl Engine {
    /// Applies a re-read configuration while clients stay connected: servers added and removed (as `PROXY ADD`
    /// and `PROXY REMOVE`), `mode`, the client limits, `hold_ms`, `replica_max_lag`, `allow_topology_commands`.
    /// Refused, with nothing changed, when `new` changes a field that cannot change live (see
    /// [`Config::unchangeable_difference`]) or would remove the master. Returns what changed, for the log.
    pub fn reconfigure(&mut self, now: Instant, new: Config) -> Result<Vec<String>, String> {
        if let Some(field) = self.config.unchangeable_difference(&new) {
            return Err(format!("`{field}` cannot change while the proxy runs (restart it to change it)"));
        }
        let current = self.servers();
        // In Sentinel mode the servers are the ones the sentinels name (the configured list is only a first view);
        // in cluster mode they are the nodes of the map (the file lists none).
        let following = self.sentinels.is_some() || self.cluster.is_some() || self.is_worker();
        let removed: Vec<ServerAddress> =
            current.iter().filter(|s| !following && !new.servers.contains(s)).cloned().collect();
        let added: Vec<ServerAddress> =
            new.servers.iter().filter(|s| !following && !current.contains(s)).cloned().collect();
        if let Some(master) =
            removed.iter().find(|s| self.monitor.find(s).is_some_and(|id| self.failover.is_involved(id)))
        {
            return Err(format!("it removes {master}, the master: fail over first (PROXY FAILOVER)"));
        }
        if let Some(draining) = added.iter().find(|s| self.monitor.find(s).is_some()) {
            return Err(format!("it adds {draining}, which is still being removed: reload again in a moment"));
        }
        let mut changes = Vec::new();
        // Added before the others are removed: removing every configured server first would meet "the last
        // server cannot be removed" half way, with some already gone.
        for address in added {
            self.add_server(now, address.clone())?;
            changes.push(format!("added server {address}"));
        }
        for address in removed {
            self.remove_server(now, &address)?;
            changes.push(format!("removing server {address}"));
        }
        if new.mode != self.config.mode {
            changes.push(format!("mode {:?} -> {:?}", self.config.mode, new.mode));
        }
        if new.server_auth != self.config.server_auth || new.server_auth_overrides != self.config.server_auth_overrides
        {
            // New connections log in with the new credentials; open ones stay logged in as they are, so that a
            // rotation (the server takes both passwords meanwhile) fails no request. A server that refused the old
            // credentials keeps refusing on the connections that sent them: those are closed and opened again.
            for (id, view) in self.monitor.views().iter() {
                self.pool.set_auth(id, new.server_credentials(&view.address).and_then(auth::auth_request));
            }
            let refusing: Vec<ServerId> = self
                .monitor
                .views()
                .iter()
                .filter(|(_, v)| v.failures.credentials_refused())
                .map(|(id, _)| id)
                .collect();
            for server in &refusing {
                self.close_backends_of(now, *server, false, "logging in again with the new server credentials");
            }
            changes.push(format!(
                "server credentials (for new connections, and at once on the {} server(s) that turned the old ones down)",
                refusing.len()
            ));
        }
        if new.client_users != self.config.client_users {
            changes.push("client users (for new logins)".to_string());
        }
        self.clients.set_limits(&new);
        self.router = Router::new(&new);
        self.pool.set_readonly(self.cluster.is_some() && new.mode == crate::Mode::ReadsToSlaves);
        self.failover.set_switchover_bound(new.hold / 2);
        self.config = new;
        Ok(changes)
    }

    /// Runs `held` if it is a `PROXY` command (true); one the authentication check refused is answered as any
    /// refusal. Out of line: only commands Redis does not know get here, and the request path stays short.
    #[cold]
    #[inline(never)]
    pub(super) fn proxy_command(&mut self, now: Instant, conn: ConnId, held: &HeldRequest) -> bool {
        if matches!(held.handling, Handling::Refuse(_)) || !admin::is_proxy_command(&held.request) {
            return false;
        }
        self.admin_command(now, conn, held);
        true
    }

    /// Runs a `PROXY` command of `conn` (refused unless it came in on the admin listener or as an admin user).
    pub(super) fn admin_command(&mut self, now: Instant, conn: ConnId, held: &HeldRequest) {
        self.out.counters.request(Target::Proxy, Class::Other);
        let allowed = self.admins.contains(conn) || self.clients.is_admin_user(conn);
        let decider = if self.sentinels.is_some() {
            admin::Decider::Sentinels
        } else if self.cluster.is_some() {
            admin::Decider::Cluster
        } else {
            admin::Decider::Proxy
        };
        let command = match admin::admit(&held.request, allowed, decider) {
            Ok(command) => command,
            Err(reply) => return self.clients.reply_local(conn, reply, &mut self.out),
        };
        self.out.event(Event::AdminCommand { conn, command: admin::describe(&held.request) });
        if let Some(reply) = admin::execute(self, now, conn, command) {
            self.clients.reply_local(conn, reply, &mut self.out);
        }
    }

    /// The servers watched now, in order (configured ones and those added since).
    pub fn servers(&self) -> Vec<ServerAddress> {
        self.monitor.views().values().filter(|v| !v.draining).map(|v| v.address.clone()).collect()
    }

    /// Watches a new server (`PROXY ADD`, a reload): probed at once; the failover rules make it a replica of the
    /// master if it is not one, and reads reach it once it is in sync (`readsToSlaves`).
    pub fn add_server(&mut self, now: Instant, address: ServerAddress) -> Result<(), String> {
        if self.monitor.find(&address).is_some() {
            return Err(format!("ERR {address} is already a server of this proxy"));
        }
        let id = self.monitor.vacant_id();
        let auth = self.config.server_credentials(&address).and_then(auth::auth_request);
        self.pool.add_server(id, address.clone(), auth);
        self.monitor.add_server(now, id, address.clone());
        self.execute_orders();
        self.out.event(Event::ServerAdded { address });
        Ok(())
    }

    /// Removes a server (`PROXY REMOVE`, a reload): it gets no new requests, those in flight finish, then its
    /// connections close. The routed master cannot be removed (fail over first).
    pub fn remove_server(&mut self, now: Instant, address: &ServerAddress) -> Result<(), String> {
        let draining = |id: ServerId| self.monitor.views().get(id).is_some_and(|v| v.draining);
        let Some(server) = self.monitor.find(address).filter(|s| !draining(*s)) else {
            return Err(format!("ERR {address} is not a server of this proxy"));
        };
        if self.failover.is_involved(server) {
            return Err(format!("ERR {address} is the master (or becoming it): fail over first (PROXY FAILOVER)"));
        }
        if self.monitor.views().values().filter(|v| !v.draining).count() <= 1 {
            return Err("ERR the last server cannot be removed".to_string());
        }
        self.monitor.drain(server);
        self.out.event(Event::ServerRemoving { address: address.clone() });
        self.finish_removals(now);
        Ok(())
    }

    /// Forgets the servers being removed that have no request of a client in flight any more.
    pub(super) fn finish_removals(&mut self, now: Instant) {
        let done: Vec<ServerId> = self.monitor.draining().filter(|s| self.pool.in_flight(*s) == 0).collect();
        for server in done {
            for conn in self.pool.conns_of(server, false) {
                self.close_and_fail(now, conn, "server removed");
            }
            let address = self.monitor.address(server).cloned();
            self.monitor.remove_server(server);
            self.pool.remove_server(server);
            self.failover.remove_server(server);
            if let Some(address) = address {
                self.out.event(Event::ServerRemoved { address });
            }
        }
    }

    /// Starts a planned switchover for the admin client `conn` (its reply comes when it ends).
    fn begin_switchover(&mut self, now: Instant, conn: ConnId, target: Option<ServerAddress>) -> Result<(), String> {
        if let (Some(_), Some(target)) = (&self.cluster, &target) {
            return self.begin_cluster_switchover(now, conn, target.clone());
        }
        if self.monitor.draining().next().is_some() {
            return Err("ERR a server is being removed: try again in a moment".to_string());
        }
        let target = match target {
            None => None,
            Some(address) => Some(
                self.monitor.find(&address).ok_or_else(|| format!("ERR {address} is not a server of this proxy"))?,
            ),
        };
        let Some(seq) = self.clients.reserve_slot(conn) else { return Ok(()) };
        let (master, target) = match self.failover.begin_switchover(now, self.monitor.views(), target, (conn, seq)) {
            Ok(pair) => pair,
            Err(why) => {
                let reply = resp::error_reply(&format!("ERR cannot fail over: {why}"));
                self.deliver(now, conn, seq, reply);
                return Ok(());
            }
        };
        if let (Some(from), Some(to)) = (self.monitor.address(master).cloned(), self.monitor.address(target).cloned()) {
            self.history.begin(now, from.clone(), "planned switchover (PROXY FAILOVER)");
            self.out.event(Event::SwitchoverStarted { from, to });
        }
        self.advance_switchover(now);
        Ok(())
    }

    /// Moves a planned switchover on (see [`Failover::advance_switchover`]).
    pub(super) fn advance_switchover(&mut self, now: Instant) {
        let Some((master, _)) = self.failover.switching() else { return };
        // Until every worker holds its writes and has its requests to the master answered, the master's offset is
        // not final: count that as a request in flight.
        let in_flight = self.pool.in_flight(master) + usize::from(self.workers_letting_go());
        match self.failover.advance_switchover(now, self.monitor.views(), in_flight) {
            SwitchoverStep::Wait => {}
            SwitchoverStep::ReadOffsets { master, target } => {
                self.monitor.request_offset(now, master);
                self.monitor.request_offset(now, target);
                self.execute_orders();
            }
            SwitchoverStep::Promote { target, reason } => {
                let Some(address) = self.monitor.address(target).cloned() else { return };
                self.history.chose(&address, &reason);
                self.out.event(Event::PromotionStarted { address, reason });
                let why = "promoting it: a planned switchover".to_string();
                self.monitor.send_replicaof(now, target, ReplicaOf::NoOne, why, &mut self.out);
                self.execute_orders();
            }
        }
    }
}

/// The engine's side of the admin commands: every operation touches several machines.
impl admin::Operations for Engine {
    fn status(&self, now: Instant) -> StatusSnapshot {
        Engine::status(self, now)
    }

    fn add_server(&mut self, now: Instant, address: ServerAddress) -> Result<(), String> {
        self.refuse_on_worker("PROXY ADD")?;
        Engine::add_server(self, now, address)
    }

    fn remove_server(&mut self, now: Instant, address: &ServerAddress) -> Result<(), String> {
        self.refuse_on_worker("PROXY REMOVE")?;
        Engine::remove_server(self, now, address)
    }

    fn begin_switchover(&mut self, now: Instant, conn: ConnId, target: Option<ServerAddress>) -> Result<(), String> {
        self.refuse_on_worker("PROXY FAILOVER")?;
        Engine::begin_switchover(self, now, conn, target)
    }

    fn request_reload(&mut self) {
        self.out.event(Event::ReloadRequested);
    }
}
