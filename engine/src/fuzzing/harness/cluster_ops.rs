//! The cluster target's part of the harness: what the fuzzed nodes say of the cluster, the requests they bounce,
//! the commands with keys the clients send, the addresses the engine may connect to, and the checks at the end.

use super::{Harness, Peer};
use crate::address::ServerAddress;
use crate::cluster_nodes;
use crate::fuzzing::cluster::{self, ClusterModel};
use crate::fuzzing::input::{Op, CLUSTER_COMMANDS, CLUSTER_KEYS};
use crate::redirect::{redirect_of, Redirect};
use crate::resp::{Limits, ReplyScanner, Request};
use crate::testkit::FakeServer;
use bytes::BytesMut;

impl Harness {
    /// Runs a cluster operation. Nothing outside cluster mode.
    pub(super) fn cluster_op(&mut self, op: Op) {
        let Some(model) = self.cluster.as_mut() else { return };
        match op {
            Op::ClusterSays { primaries, style, epochs } => {
                let nodes = model.raw.len();
                *model = ClusterModel { primaries, style, epochs, raw: vec![None; nodes] };
            }
            Op::ClusterRaw { node, data } => {
                let nodes = model.raw.len();
                model.raw[usize::from(node) % nodes] = Some(data);
            }
            Op::BackendRedirect { backend, count, flavor, target } => {
                let Some(i) = self.open_backend(backend, Some(true)) else { return };
                let Peer::Server(server) = self.backends[i].peer else { return };
                let mut out = Vec::new();
                for _ in 0..usize::from(count % 4) + 1 {
                    let Some(request) = self.backends[i].unanswered.pop_front() else { break };
                    self.answer_in_cluster(i, server, &request, 8 + flavor % 8, target, &mut out);
                }
                self.deliver_backend(i, &out);
            }
            Op::ClientKeys { client, command, keys } => {
                let Some(i) = self.open_client(client) else { return };
                let command = CLUSTER_COMMANDS[usize::from(command) % CLUSTER_COMMANDS.len()];
                let keys: Vec<&str> =
                    keys.iter().take(6).map(|k| CLUSTER_KEYS[usize::from(*k) % CLUSTER_KEYS.len()]).collect();
                let count = keys.len().to_string();
                let mut words = vec![command];
                match command {
                    "SET" | "MSET" | "MSETNX" => keys.iter().for_each(|k| words.extend([*k, "v"])),
                    "EVAL" => words.extend(["return 1", count.as_str()].into_iter().chain(keys.iter().copied())),
                    "SCAN" => words.push("0"),
                    "CLUSTER" => words.push(["SLOTS", "NODES", "INFO"][keys.len() % 3]),
                    "SPUBLISH" => words.extend([keys.first().copied().unwrap_or("ch"), "m"]),
                    "SSUBSCRIBE" | "SUNSUBSCRIBE" => {
                        self.clients[i].subscribed = true;
                        words.extend(keys.iter().copied());
                    }
                    _ => words.extend(keys.iter().copied()),
                }
                self.send_words(i, &words);
            }
            _ => {}
        }
    }

    /// Appends to `out` what the node `server`, reached by backend `i`, answers to `request`: `CLUSTER` from the
    /// model, the probe's commands as a fake server, data commands as `flavor` says (see
    /// [`cluster::answer_data`]). Every address the answer names is noted as one the engine may connect to.
    pub(super) fn answer_in_cluster(
        &mut self,
        i: usize,
        server: usize,
        request: &Request,
        flavor: u8,
        target: u8,
        out: &mut Vec<u8>,
    ) {
        let Some(model) = self.cluster.as_ref() else { return };
        let name = request.arg(0).unwrap_or_default().to_ascii_uppercase();
        let start = out.len();
        match name.as_slice() {
            b"CLUSTER" => match &request.arg(1).unwrap_or_default().to_ascii_uppercase()[..] {
                b"INFO" => out.extend_from_slice(&model.info(server)),
                b"NODES" => {
                    let reply = model.nodes_text(server, &self.universe);
                    // What the engine can read from it: the addresses it may connect to from now on.
                    let asked = &self.backends[i].address;
                    let text = cluster_nodes::bulk_text(&reply);
                    if let Some(nodes) = text.and_then(|t| cluster_nodes::parse_nodes(t, asked).ok()) {
                        self.may_connect.extend(nodes.into_iter().filter_map(|n| n.address));
                    }
                    out.extend_from_slice(&reply);
                }
                _ => out.extend_from_slice(b"-ERR unknown subcommand\r\n"),
            },
            b"PING" | b"INFO" | b"AUTH" | b"RESET" | b"CONFIG" | b"HELLO" | b"CLIENT" | b"SELECT" => {
                crate::fuzzing::servers::answer(&mut self.servers[server], request, flavor, out)
            }
            _ => cluster::answer_data(request, flavor, target, &self.universe, out),
        }
        if let Some(Redirect::Moved { address, .. } | Redirect::Ask { address, .. }) = redirect_of(&out[start..]) {
            self.may_connect.insert(address);
        }
    }

    /// The index of `address` in the universe; one a node named that is not there yet is added (with a fake
    /// server of its own).
    pub(super) fn server_index(&mut self, address: &ServerAddress) -> usize {
        if let Some(index) = self.universe.iter().position(|s| address.is_named(&s.host, s.port)) {
            return index;
        }
        assert!(self.cluster.is_some(), "Connect to {address}, not a known server");
        self.universe.push(address.clone());
        self.servers.push(FakeServer::master(address.port));
        self.universe.len() - 1
    }

    /// The end of the cluster target, after the harness settled: every client that stayed connected got one
    /// reply per request; then, once every client is gone and every backend closed, nothing is left in flight.
    pub(super) fn check_cluster_end(&mut self) {
        for client in self.clients.iter().filter(|c| c.open && !c.shadow_error && !c.subscribed) {
            let mut scanner = ReplyScanner::new(Limits::default());
            let mut buf = BytesMut::new();
            for piece in &client.sends {
                buf.extend_from_slice(piece);
            }
            let mut replies = 0;
            while let Ok(Some(frame)) = scanner.next_reply(&mut buf) {
                replies += usize::from(frame.first() != Some(&b'>'));
            }
            assert_eq!(
                replies, client.requests,
                "client {}: {} replies to {} requests",
                client.id, replies, client.requests
            );
        }
        for i in 0..self.clients.len() {
            if self.clients[i].open {
                self.clients[i].open = false;
                self.driver.closed(self.clients[i].id);
                self.drain();
            }
        }
        self.settle();
        let status = self.driver.engine.status(self.driver.clock.now());
        let cluster = status.cluster.expect("cluster mode");
        assert_eq!(cluster.in_flight, 0, "routed requests left in the engine after every client left: {cluster:?}");
    }
}
