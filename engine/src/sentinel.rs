//! Sentinel mode: Redis Sentinel decides which server is the master, the proxy routes.
//!
//! Every `check_period` (every [`URGENT_POLL`] while something changes) each configured sentinel is asked
//! `SENTINEL get-master-addr-by-name` and `SENTINEL replicas` on a connection of its own; a second connection per
//! sentinel subscribes to its event channels (`+switch-master`, `+odown`, ...), which only prompt an earlier round:
//! an event is one sentinel's word, not the truth. A master is accepted when more than half of the configured
//! sentinels name it in fresh answers (a lone sentinel can be stale or partitioned away), and routed to only once
//! its own `INFO` (the monitor's probe) reports `role:master` after the sentinels agreed. Without a majority the
//! current master is kept for `majority_lost_after`, then dropped: a majority elsewhere may have promoted another.
//! The proxy never sends `REPLICAOF` here.
//!
//! The sentinels' connections are named by [`Line::Sentinel`] (a sentinel's index in the configuration): what to
//! open, send and close is recorded as [`Orders`], which the engine hands to the pool.

use crate::address::ServerAddress;
use crate::auth;
use crate::config::{Credentials, PasswordSource, SentinelConfig};
use crate::contract::Outbox;
use crate::event::Event;
use crate::failover::Decision;
use crate::pool::{Line, Orders, SentinelQuery, Waiter};
use crate::resp::Request;
use crate::server_id::ServerId;
use crate::topology::{Role, Views};
use bytes::Bytes;
use smallvec::SmallVec;
use std::time::{Duration, Instant};

/// How often the sentinels are asked while a change is under way (an event came, or the master they name is not
/// routed yet): Sentinel's own failover steps are this far apart, so the proxy follows within one of them.
pub(crate) const URGENT_POLL: Duration = Duration::from_millis(100);

/// How long after a sentinel event the polling stays urgent: the other sentinels learn a new configuration from
/// the leader's hello messages, sent every 2 s.
const URGENT_WINDOW: Duration = Duration::from_secs(5);

/// The channels whose messages prompt a round: the master changed, or its reachability did.
const CHANNELS: &[&str] = &["+switch-master", "+odown", "-odown", "+sdown", "-sdown", "+failover-end"];

/// What following the sentinels asks of the engine (see [`Sentinels::follow`]).
pub(crate) struct Following {
    /// Whether each server may serve reads; empty without an agreed master (nothing changes then).
    pub(crate) reads: Vec<(ServerId, bool)>,
    /// What to carry out, in order: `Lose` of the routed master, `Adopt` of the named one.
    pub(crate) decisions: SmallVec<[Decision; 2]>,
    /// The server a majority names that has not confirmed it yet: ask it for its `INFO`.
    pub(crate) confirm: Option<ServerId>,
}

/// A replica as a sentinel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ReplicaReport {
    pub(crate) address: ServerAddress,
    /// Not flagged `s_down`, `o_down` or `disconnected`, and `master-link-status` is `ok`.
    pub(crate) healthy: bool,
}

/// What one sentinel said in its latest answer.
#[derive(Clone, Debug, Default)]
struct Answer {
    /// When its `get-master-addr-by-name` reply arrived.
    at: Option<Instant>,
    /// The master it names (None: it does not know the name).
    master: Option<ServerAddress>,
    /// Its latest replica list.
    replicas: Vec<ReplicaReport>,
}

/// One configured sentinel.
#[derive(Clone, Debug)]
struct Node {
    address: ServerAddress,
    /// Whether its query connection is open: ordered opened, and neither closed nor reported lost since.
    command_open: bool,
    /// Whether its subscription connection is open, in the same sense.
    subscriber_open: bool,
    /// When the connections were last opened (a lost sentinel is retried at most once per `check_period`).
    opened_at: Option<Instant>,
    /// When the round still unanswered was sent.
    asked_at: Option<Instant>,
    /// Replies to questions outstanding on the command connection (`AUTH` aside).
    pending: usize,
    /// What was wrong with its replies since its last good answer (each reported once).
    complained: Vec<String>,
    answer: Answer,
}

/// The sentinels, their answers, and what the majority says.
pub(crate) struct Sentinels {
    nodes: Vec<Node>,
    master_name: String,
    auth: Option<Bytes>,
    hello: Bytes,
    check_period: Duration,
    majority_lost_after: Duration,
    next_round: Instant,
    urgent_until: Option<Instant>,
    /// The address the majority names and since when it does.
    agreed: Option<(ServerAddress, Instant)>,
    /// When a majority last agreed (None: never).
    majority_at: Option<Instant>,
    /// Whether the loss of the majority was reported (once per loss).
    lost_reported: bool,
    /// When following began: before the first answers can have come, no majority is no news.
    started: Instant,
    /// When the named master that has not confirmed yet was last asked for its `INFO`.
    confirm_asked_at: Option<Instant>,
    /// What the pool is to do, until the engine hands it over.
    orders: Orders,
}

impl Sentinels {
    /// Following the sentinels of `config` from `now`; the first round goes out at the first tick.
    pub(crate) fn new(config: &SentinelConfig, check_period: Duration, now: Instant) -> Sentinels {
        let nodes = config
            .sentinels
            .iter()
            .map(|address| Node {
                address: address.clone(),
                command_open: false,
                subscriber_open: false,
                opened_at: None,
                asked_at: None,
                pending: 0,
                complained: Vec::new(),
                answer: Answer::default(),
            })
            .collect();
        let auth = config.credentials.as_ref().and_then(auth::auth_request);
        let mut hello: Vec<&[u8]> = vec![b"HELLO", b"3"];
        if let Some(Credentials { username, password: PasswordSource::Plain(password) }) = &config.credentials {
            let user = username.as_deref().unwrap_or("default");
            hello.extend([b"AUTH".as_slice(), user.as_bytes(), password.expose()]);
        }
        let mut subscribe = vec!["SUBSCRIBE"];
        subscribe.extend(CHANNELS);
        let hello = [Request::from_args(&hello).frame().clone(), Request::from_args(&subscribe).frame().clone()]
            .concat()
            .into();
        Sentinels {
            nodes,
            master_name: config.master_name.clone(),
            auth,
            hello,
            check_period,
            majority_lost_after: config.majority_lost_after,
            next_round: now,
            urgent_until: None,
            agreed: None,
            majority_at: None,
            lost_reported: false,
            started: now,
            confirm_asked_at: None,
            orders: Orders::default(),
        }
    }

    /// What following the sentinels ordered since the pool last carried it out.
    pub(crate) fn orders(&mut self) -> &mut Orders {
        &mut self.orders
    }

    /// How long an answer counts: a sentinel that stopped answering has no say after it.
    fn fresh_for(&self) -> Duration {
        2 * self.check_period
    }

    /// The next instant the sentinels need attention: a round, or the end of the majority-lost bound.
    pub(crate) fn deadline(&self, routing: bool) -> Instant {
        match self.cut_off_at().filter(|_| routing && self.agreed.is_none()) {
            Some(at) => at.min(self.next_round),
            None => self.next_round,
        }
    }

    /// Polls every [`URGENT_POLL`] until `until` (a change the proxy waits for).
    pub(crate) fn hurry(&mut self, now: Instant, until: Instant) {
        self.urgent_until = Some(self.urgent_until.map_or(until, |u| u.max(until)));
        self.next_round = self.next_round.min(now + URGENT_POLL);
    }

    /// Whether the named master may be asked for its `INFO` again now: at most once per [`URGENT_POLL`], since
    /// each answer that does not confirm it would otherwise ask again at once. Polls the sentinels urgently
    /// meanwhile.
    pub(crate) fn confirm_due(&mut self, now: Instant) -> bool {
        self.hurry(now, now + self.check_period);
        let due = self.confirm_asked_at.is_none_or(|at| now.saturating_duration_since(at) >= URGENT_POLL);
        if due {
            self.confirm_asked_at = Some(now);
        }
        due
    }

    /// Opens the connections that are missing and asks every sentinel with nothing outstanding, when a round is
    /// due. A sentinel whose answer is overdue is reconnected.
    pub(crate) fn tick(&mut self, now: Instant) {
        if now < self.next_round {
            return;
        }
        let urgent = self.urgent_until.is_some_and(|until| now < until);
        self.next_round = now + if urgent { URGENT_POLL } else { self.check_period };
        let fresh_for = self.fresh_for();
        for index in 0..self.nodes.len() {
            let (command, subscriber) =
                (Line::Sentinel { index, subscriber: false }, Line::Sentinel { index, subscriber: true });
            let node = &mut self.nodes[index];
            if node.asked_at.is_some_and(|at| now.saturating_duration_since(at) > fresh_for) {
                // A sentinel that does not answer (partitioned, stopped) is asked afresh on a new connection.
                close_node(index, node, &mut self.orders);
            }
            let retry_due = node.opened_at.is_none_or(|at| now.saturating_duration_since(at) >= self.check_period);
            if !node.command_open && retry_due {
                self.orders.open(command);
                if let Some(auth) = &self.auth {
                    // The first questions follow at once: a refused AUTH makes them fail too, and is reported.
                    self.orders.send(command, &[Waiter::Sentinel(SentinelQuery::Auth)], auth.clone());
                }
                node.command_open = true;
                node.opened_at = Some(now);
            }
            if !node.subscriber_open && retry_due {
                self.orders.open(subscriber);
                // SUBSCRIBE answers with pushes once HELLO 3 is taken; a refused HELLO is reported, and the
                // SUBSCRIBE refused after it closes this connection alone.
                self.orders.send(subscriber, &[Waiter::Sentinel(SentinelQuery::Subscribe)], self.hello.clone());
                node.subscriber_open = true;
                node.opened_at = Some(now);
            }
            if !node.command_open || node.pending > 0 {
                continue;
            }
            let name = self.master_name.as_str();
            let ask = [
                Request::from_args(&["SENTINEL", "get-master-addr-by-name", name]).frame().clone(),
                Request::from_args(&["SENTINEL", "replicas", name]).frame().clone(),
            ]
            .concat();
            let waiters = [Waiter::Sentinel(SentinelQuery::MasterAddr), Waiter::Sentinel(SentinelQuery::Replicas)];
            self.orders.send(command, &waiters, ask.into());
            node.pending += 2;
            node.asked_at = Some(now);
        }
    }

    /// A reply to `query` from sentinel `index`. A reply that makes no sense is reported and counts as no answer.
    pub(crate) fn reply(&mut self, now: Instant, index: usize, query: SentinelQuery, frame: &[u8], out: &mut Outbox) {
        let authenticates = self.auth.is_some();
        let Some(node) = self.nodes.get_mut(index) else { return };
        if query.is_round_question() {
            node.pending = node.pending.saturating_sub(1);
            if node.pending == 0 {
                node.asked_at = None;
            }
        }
        let value = parse(frame);
        // Reported once until the sentinel answers well again: a wrong password would repeat it every round.
        let mut complain = |what: &str| {
            if !node.complained.contains(&what.to_string()) {
                node.complained.push(what.to_string());
                let text = String::from_utf8_lossy(&frame[..frame.len().min(120)]).trim_end().to_string();
                out.event(Event::SentinelError { sentinel: node.address.clone(), message: format!("{what}: {text}") });
            }
        };
        match query {
            SentinelQuery::Auth => {
                if !matches!(value, Some(Value::Simple(_))) {
                    complain("AUTH failed");
                }
            }
            SentinelQuery::Subscribe => {
                if !matches!(value, Some(Value::Array(_))) {
                    complain(if authenticates { "HELLO 3 AUTH failed" } else { "HELLO 3 refused" });
                }
            }
            SentinelQuery::MasterAddr => match value.as_ref().map(master_address) {
                Some(Some(master)) => {
                    node.answer = Answer { at: Some(now), master, ..node.answer.clone() };
                    node.complained.clear();
                }
                _ => {
                    node.answer.at = None;
                    complain("unexpected get-master-addr-by-name reply");
                }
            },
            SentinelQuery::Replicas => match value.as_ref().and_then(replica_reports) {
                Some(replicas) => node.answer.replicas = replicas,
                None => complain("unexpected SENTINEL replicas reply"),
            },
        }
    }

    /// A push from sentinel `index`: a message on a subscribed channel prompts a round now.
    pub(crate) fn push(&mut self, now: Instant, index: usize, frame: &[u8], out: &mut Outbox) {
        let Some(node) = self.nodes.get(index) else { return };
        if let Some(Value::Array(items)) = parse(frame) {
            if let [Value::Bulk(kind), Value::Bulk(channel), Value::Bulk(payload)] = items.as_slice() {
                if kind == b"message" {
                    out.event(Event::SentinelNotice {
                        sentinel: node.address.clone(),
                        channel: String::from_utf8_lossy(channel).into_owned(),
                        payload: String::from_utf8_lossy(payload).into_owned(),
                    });
                    self.hurry(now, now + URGENT_WINDOW);
                    self.next_round = now;
                }
            }
        }
    }

    /// A connection of sentinel `index` is gone (refused, broken, closed): if it was its query connection
    /// (not the `subscriber`), its answer no longer counts and both its connections are reopened at the next round;
    /// a lost subscription alone is reopened then (the answers stay good).
    pub(crate) fn lost(&mut self, index: usize, subscriber: bool) {
        let Some(node) = self.nodes.get_mut(index) else { return };
        if subscriber {
            node.subscriber_open = false;
        } else {
            node.command_open = false;
            close_node(index, node, &mut self.orders);
        }
    }

    /// Recomputes what the majority says at `now` from the fresh answers (see [`Sentinels::agreed`]); a new
    /// agreement and the loss of the majority (keeping `routed`) are reported, each once.
    pub(crate) fn evaluate(&mut self, now: Instant, routed: Option<&ServerAddress>, out: &mut Outbox) {
        let fresh_for = self.fresh_for();
        let fresh: Vec<&Answer> = self
            .nodes
            .iter()
            .map(|n| &n.answer)
            .filter(|a| a.at.is_some_and(|at| now.saturating_duration_since(at) <= fresh_for))
            .collect();
        let answers: Vec<Option<&ServerAddress>> = fresh.iter().map(|a| a.master.as_ref()).collect();
        let majority = self.nodes.len() / 2 + 1;
        match majority_of(&answers, self.nodes.len()) {
            Some(address) => {
                // The majority last spoke when the last of its members needed for it answered: the bound counts
                // from there, not from this evaluation (answers stay fresh a while after they arrive).
                let mut times: Vec<Instant> =
                    fresh.iter().filter(|a| a.master.as_ref() == Some(address)).filter_map(|a| a.at).collect();
                times.sort_unstable_by(|a, b| b.cmp(a));
                self.majority_at = times.get(majority - 1).copied().or(Some(now));
                self.lost_reported = false;
                if self.agreed.as_ref().is_none_or(|(a, _)| a != address) {
                    let agreeing = answers.iter().filter(|a| **a == Some(address)).count();
                    out.event(Event::SentinelMajority {
                        address: address.clone(),
                        agreeing,
                        configured: self.nodes.len(),
                    });
                    self.agreed = Some((address.clone(), now));
                }
            }
            None => {
                let news = self.majority_at.is_some() || now.saturating_duration_since(self.started) >= fresh_for;
                if !self.lost_reported && news {
                    self.lost_reported = true;
                    out.event(Event::SentinelNoMajority {
                        answering: answers.len(),
                        needed: majority,
                        configured: self.nodes.len(),
                        keeping: routed.cloned(),
                    });
                }
                self.agreed = None;
            }
        }
    }

    /// The master a majority names now, and since when it does.
    pub(crate) fn agreed(&self) -> Option<(&ServerAddress, Instant)> {
        self.agreed.as_ref().map(|(address, since)| (address, *since))
    }

    /// When a proxy without a majority must stop routing writes (None: it never had one).
    fn cut_off_at(&self) -> Option<Instant> {
        self.majority_at.map(|at| at + self.majority_lost_after)
    }

    /// Whether the proxy has been without a majority for longer than `majority_lost_after`.
    pub(crate) fn cut_off(&self, now: Instant) -> bool {
        self.agreed.is_none() && self.cut_off_at().is_none_or(|at| now >= at)
    }

    /// Recomputes what the majority says (see [`Sentinels::evaluate`]) and returns the servers it names, the
    /// agreed master and the replicas listed beside it: the engine watches each one it does not watch yet before
    /// it asks [`Sentinels::follow`] what to do.
    pub(crate) fn named_servers(
        &mut self,
        now: Instant,
        routed: Option<&ServerAddress>,
        out: &mut Outbox,
    ) -> Vec<ServerAddress> {
        self.evaluate(now, routed, out);
        let master = self.agreed().map(|(address, _)| address.clone());
        let replicas = self.replicas().unwrap_or_default().iter().map(|r| r.address.clone());
        master.into_iter().chain(replicas).collect()
    }

    /// What following the sentinels means now for the servers in `views` and the `routed` master: which
    /// servers may serve reads (only the replicas the sentinels list as healthy), the decisions to carry out
    /// (stop routing to the old master, route to the one a majority names once its own `INFO` confirms it, or
    /// to none when the proxy is cut off from the majority for too long), and a server to ask for `INFO`.
    pub(crate) fn follow(&self, now: Instant, views: &Views, routed: Option<ServerId>) -> Following {
        let find = |address: &ServerAddress| {
            views.iter().find(|(_, v)| v.address.is_named(&address.host, address.port)).map(|(id, _)| id)
        };
        let agreed = self.agreed().and_then(|(address, since)| Some((find(address)?, since)));
        let reads = match self.replicas() {
            None => Vec::new(),
            Some(replicas) => views
                .iter()
                .map(|(id, view)| {
                    let named = |r: &ReplicaReport| view.address.is_named(&r.address.host, r.address.port);
                    (id, replicas.iter().any(|r| r.healthy && named(r)))
                })
                .collect(),
        };
        let mut decisions = SmallVec::new();
        let mut confirm = None;
        match verdict(views, routed, agreed, self.cut_off(now)) {
            Verdict::Keep => {}
            Verdict::Route(master) => {
                if let Some(old) = routed {
                    let reason = "a majority of the sentinels names another master";
                    decisions.push(Decision::Lose { master: old, reason });
                }
                let reason = "a majority of the sentinels names it and its INFO reports role:master";
                decisions.push(Decision::Adopt { master, reason });
            }
            Verdict::Drop { reason, confirm: named } => {
                if let Some(old) = routed {
                    decisions.push(Decision::Lose { master: old, reason });
                }
                confirm = named;
            }
            Verdict::Confirm(server) => confirm = Some(server),
        }
        Following { reads, decisions, confirm }
    }

    /// The replicas listed by the sentinels whose standing answer names the agreed master (the first of them, in
    /// configuration order, that lists any), or None without agreement.
    fn replicas(&self) -> Option<&[ReplicaReport]> {
        let (agreed, _) = self.agreed.as_ref()?;
        let mut agreeing =
            self.nodes.iter().filter(|n| n.answer.at.is_some() && n.answer.master.as_ref() == Some(agreed));
        let first = agreeing.clone().next()?;
        Some(agreeing.find(|n| !n.answer.replicas.is_empty()).unwrap_or(first).answer.replicas.as_slice())
    }
}

/// Closes both connections of `node`, sentinel `index` (those still open), and forgets its answer.
fn close_node(index: usize, node: &mut Node, orders: &mut Orders) {
    for subscriber in [false, true] {
        let open = if subscriber { &mut node.subscriber_open } else { &mut node.command_open };
        if std::mem::take(open) {
            orders.close(Line::Sentinel { index, subscriber });
        }
    }
    node.pending = 0;
    node.asked_at = None;
    node.answer.at = None;
}

/// The address named by more than half of `configured` sentinels among `answers` (one per sentinel that answered
/// in time; None: it does not know the master).
pub(crate) fn majority_of<'a>(answers: &[Option<&'a ServerAddress>], configured: usize) -> Option<&'a ServerAddress> {
    let needed = configured / 2 + 1;
    answers
        .iter()
        .flatten()
        .copied()
        .find(|candidate| answers.iter().filter(|a| **a == Some(*candidate)).count() >= needed)
}

/// What the proxy does about the master, from the sentinels' agreement and the servers' own word.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing changes.
    Keep,
    /// Route writes to this server from now on (a majority names it and its `INFO` confirms it).
    Route(ServerId),
    /// Stop routing to the routed master, for this reason; if `confirm` is set, that server is the one a majority
    /// names but it has not confirmed yet: probe it again.
    Drop {
        /// Why, for the log.
        reason: &'static str,
        /// The server a majority names instead, not confirmed yet.
        confirm: Option<ServerId>,
    },
    /// A majority names this server, which has not confirmed it yet (no master is routed): probe it again.
    Confirm(ServerId),
}

/// Decides what to do about `routed` (the master writes go to) given the server a majority names (`agreed`, and
/// since when), whether the proxy is `cut_off` from the majority for too long, and the servers' views.
pub(crate) fn verdict(
    views: &Views,
    routed: Option<ServerId>,
    agreed: Option<(ServerId, Instant)>,
    cut_off: bool,
) -> Verdict {
    let Some((named, since)) = agreed else {
        return match routed {
            Some(_) if cut_off => {
                Verdict::Drop { reason: "no majority of the sentinels heard for majority_lost_after", confirm: None }
            }
            _ => Verdict::Keep,
        };
    };
    let Some(view) = views.get(named) else { return Verdict::Keep };
    if routed == Some(named) {
        return if view.is(Role::Replica) {
            Verdict::Drop { reason: "it reports role:slave", confirm: Some(named) }
        } else {
            Verdict::Keep
        };
    }
    // Its own INFO, asked after the sentinels agreed, must say master: a sentinel's word alone may be stale.
    let confirmed = view.is(Role::Master) && view.info_at.is_some_and(|at| at >= since);
    match (confirmed, routed) {
        (true, _) => Verdict::Route(named),
        (false, Some(_)) => {
            Verdict::Drop { reason: "a majority of the sentinels names another master", confirm: Some(named) }
        }
        (false, None) => Verdict::Confirm(named),
    }
}

/// A reply value, as much as Sentinel mode needs of it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Value {
    Simple(Vec<u8>),
    Error,
    Bulk(Vec<u8>),
    Nil,
    Number,
    /// Arrays, sets, pushes, and maps (flattened to key, value, ...).
    Array(Vec<Value>),
}

/// How deep replies may nest here: `SENTINEL replicas` is two levels.
const MAX_DEPTH: usize = 4;

/// Parses one complete reply frame; None when it is not one (a sentinel's reply is input: never trusted).
fn parse(frame: &[u8]) -> Option<Value> {
    let (value, used) = parse_at(frame, 0, 0)?;
    (used == frame.len()).then_some(value)
}

fn parse_at(frame: &[u8], pos: usize, depth: usize) -> Option<(Value, usize)> {
    let kind = *frame.get(pos)?;
    // The line after the type byte: a CRLF at `pos` itself leaves no type byte, and is no reply.
    let end = pos + 1 + frame.get(pos + 1..)?.windows(2).position(|w| w == b"\r\n")?;
    let line = &frame[pos + 1..end];
    let next = end + 2;
    let number = || std::str::from_utf8(line).ok()?.parse::<i64>().ok();
    match kind {
        b'+' => Some((Value::Simple(line.to_vec()), next)),
        b'-' | b'!' => Some((Value::Error, next)),
        b':' | b',' | b'(' | b'#' => Some((Value::Number, next)),
        b'_' => Some((Value::Nil, next)),
        b'$' | b'=' => {
            let len = number()?;
            if len < 0 {
                return Some((Value::Nil, next));
            }
            let stop = next.checked_add(usize::try_from(len).ok()?)?;
            let after = stop.checked_add(2)?;
            if frame.get(stop..after)? != b"\r\n" {
                return None;
            }
            Some((Value::Bulk(frame.get(next..stop)?.to_vec()), after))
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let count = number()?;
            if count < 0 {
                return Some((Value::Nil, next));
            }
            if depth >= MAX_DEPTH {
                return None;
            }
            let elements = if matches!(kind, b'%' | b'|') { count.checked_mul(2)? } else { count };
            let (mut items, mut at) = (Vec::new(), next);
            for _ in 0..elements {
                // Each element takes at least 3 bytes: a count larger than the frame is a lie, stopped here.
                let (item, after) = parse_at(frame, at, depth + 1)?;
                items.push(item);
                at = after;
            }
            if kind == b'|' {
                // An attribute precedes the real reply.
                return parse_at(frame, at, depth);
            }
            Some((Value::Array(items), at))
        }
        _ => None,
    }
}

/// A bulk as text.
fn text(value: &Value) -> Option<&str> {
    match value {
        Value::Bulk(bytes) | Value::Simple(bytes) => std::str::from_utf8(bytes).ok(),
        _ => None,
    }
}

/// An `ip`/`port` pair as an address, if both are valid.
fn address(ip: &str, port: &str) -> Option<ServerAddress> {
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    crate::address::valid_host(ip).then(|| ServerAddress { host: ip.to_string(), port })
}

/// The reply to `get-master-addr-by-name`: Some(None) when the sentinel does not know the name, None when the
/// reply is not one.
fn master_address(value: &Value) -> Option<Option<ServerAddress>> {
    match value {
        Value::Nil => Some(None),
        Value::Array(items) => match items.as_slice() {
            [ip, port] => address(text(ip)?, text(port)?).map(Some),
            _ => None,
        },
        _ => None,
    }
}

/// The reply to `SENTINEL replicas`: one field list per replica; entries without a usable address are skipped.
fn replica_reports(value: &Value) -> Option<Vec<ReplicaReport>> {
    let Value::Array(entries) = value else { return None };
    let mut reports = Vec::new();
    for entry in entries {
        let Value::Array(fields) = entry else { return None };
        let field = |name: &str| {
            fields.chunks_exact(2).find(|pair| text(&pair[0]) == Some(name)).and_then(|pair| text(&pair[1]))
        };
        let Some(address) = field("ip").zip(field("port")).and_then(|(ip, port)| address(ip, port)) else {
            continue;
        };
        let flags_ok = field("flags")
            .is_some_and(|flags| !flags.split(',').any(|f| matches!(f, "s_down" | "o_down" | "disconnected")));
        let link_ok = field("master-link-status") == Some("ok");
        reports.push(ReplicaReport { address, healthy: flags_ok && link_ok });
    }
    Some(reports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Order;
    use proptest::prelude::*;

    proptest! {
        /// A sentinel's reply is input: whatever bytes come, parsing them never panics.
        #[test]
        fn parsing_any_reply_never_panics(pieces in proptest::collection::vec(prop_oneof![
            Just(b"*2\r\n".to_vec()), Just(b"*-1\r\n".to_vec()), Just(b"%1\r\n".to_vec()), Just(b">3\r\n".to_vec()),
            Just(b"|1\r\n".to_vec()), Just(b"$4\r\n".to_vec()), Just(b"$-1\r\n".to_vec()), Just(b"_\r\n".to_vec()),
            Just(b"port".to_vec()), Just(b"flags".to_vec()), Just(b"\r\n".to_vec()), Just(b":1\r\n".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..6),
        ], 0..12)) {
            let frame = pieces.concat();
            if let Some(value) = parse(&frame) {
                let _ = master_address(&value);
                let _ = replica_reports(&value);
            }
        }
    }

    fn addr(port: u16) -> ServerAddress {
        ServerAddress { host: "127.0.0.1".into(), port }
    }

    /// One sentinel that takes `username`/`password`, after its first round: the connections are asked for.
    fn one_sentinel_with(username: Option<&str>, password: &str) -> (Sentinels, Vec<Order>, Instant) {
        let config = SentinelConfig {
            sentinels: vec![addr(26000)],
            master_name: "m".into(),
            credentials: Some(Credentials {
                username: username.map(str::to_string),
                password: PasswordSource::Plain(crate::config::Secret::new(password)),
            }),
            majority_lost_after: Duration::from_secs(5),
        };
        let now = Instant::now();
        let mut sentinels = Sentinels::new(&config, Duration::from_secs(1), now);
        sentinels.tick(now);
        let orders = sentinels.orders().take().collect();
        (sentinels, orders, now)
    }

    const QUERY: Line = Line::Sentinel { index: 0, subscriber: false };
    const SUBSCRIPTION: Line = Line::Sentinel { index: 0, subscriber: true };

    #[test]
    fn credentials_go_first_on_both_connections() {
        let (mut sentinels, orders, now) = one_sentinel_with(Some("proxy"), "secret");
        let sent: Vec<(Line, Vec<u8>)> = orders
            .iter()
            .filter_map(|o| match o {
                Order::Send { line, data, .. } => Some((*line, data.to_vec())),
                _ => None,
            })
            .collect();
        let auth = Request::from_args(&["AUTH", "proxy", "secret"]).frame().to_vec();
        let hello = Request::from_args(&["HELLO", "3", "AUTH", "proxy", "secret"]).frame().to_vec();
        assert_eq!(orders[0], Order::Open(QUERY), "{orders:?}");
        assert_eq!(sent[0], (QUERY, auth), "the query connection authenticates first");
        assert!(sent[1].0 == SUBSCRIPTION && sent[1].1.starts_with(&hello), "the subscription says HELLO 3 first");
        let question = b"*3\r\n$8\r\nSENTINEL\r\n$23\r\nget-master-addr-by-name";
        assert!(sent[2].0 == QUERY && sent[2].1.starts_with(question), "then the questions");
        assert_eq!(sent.len(), 3);

        // A wrong password: every reply is an error, reported once until a good answer comes.
        let mut out = Outbox::default();
        let noauth = b"-NOAUTH Authentication required.\r\n";
        for _ in 0..3 {
            sentinels.reply(now, 0, SentinelQuery::MasterAddr, noauth, &mut out);
        }
        assert_eq!(out.events.len(), 1, "{:?}", out.events);
        let good = b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6379\r\n";
        sentinels.reply(now, 0, SentinelQuery::MasterAddr, good, &mut out);
        sentinels.reply(now, 0, SentinelQuery::MasterAddr, noauth, &mut out);
        assert_eq!(out.events.len(), 2, "{:?}", out.events);
    }

    #[test]
    fn a_refused_subscription_is_reported_and_leaves_the_query_connection_alone() {
        let (mut sentinels, orders, now) = one_sentinel_with(None, "wrong");
        let opened: Vec<Line> = orders
            .iter()
            .filter_map(|o| match o {
                Order::Open(line) => Some(*line),
                _ => None,
            })
            .collect();
        assert_eq!(opened, [QUERY, SUBSCRIPTION]);
        let mut out = Outbox::default();
        // The subscription's replies can come first: its refused HELLO says why, and the refused SUBSCRIBE after
        // it (a reply nobody waits for) loses that connection alone.
        sentinels.reply(now, 0, SentinelQuery::Subscribe, b"-WRONGPASS invalid password\r\n", &mut out);
        sentinels.lost(0, true);
        let orders: Vec<Order> = sentinels.orders().take().collect();
        assert!(orders.is_empty(), "the query connection stays: {orders:?}");
        sentinels.reply(now, 0, SentinelQuery::Auth, b"-WRONGPASS invalid password\r\n", &mut out);
        let said: Vec<String> = out.events.iter().map(|e| format!("{e:?}")).collect();
        assert!(said.iter().any(|e| e.contains("HELLO 3 AUTH failed")), "{said:?}");
        assert!(said.iter().any(|e| e.contains("\"AUTH failed")), "{said:?}");
    }

    #[test]
    fn a_majority_of_the_configured_sentinels_is_needed() {
        let (a, b) = (addr(1), addr(2));
        assert_eq!(majority_of(&[Some(&a), Some(&a), Some(&b)], 3), Some(&a));
        assert_eq!(majority_of(&[Some(&a), Some(&b)], 3), None, "split");
        assert_eq!(majority_of(&[Some(&a)], 3), None, "one of three is no majority, even if it is all we hear");
        assert_eq!(majority_of(&[Some(&a), Some(&a)], 4), None, "two of four is no majority");
        assert_eq!(majority_of(&[Some(&a), None, Some(&a)], 3), Some(&a));
        assert_eq!(majority_of(&[None, None, None], 3), None);
        assert_eq!(majority_of(&[Some(&b)], 1), Some(&b));
    }

    #[test]
    fn parses_sentinel_replies_and_refuses_nonsense() {
        let master = parse(b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n").unwrap();
        assert_eq!(master_address(&master), Some(Some(addr(6380))));
        assert_eq!(master_address(&parse(b"*-1\r\n").unwrap()), Some(None));
        assert_eq!(master_address(&parse(b"_\r\n").unwrap()), Some(None));
        for bad in [&b"*2\r\n$9\r\n127.0.0.1\r\n$5\r\n99999\r\n"[..], b"*1\r\n$1\r\nx\r\n", b"-ERR no\r\n"] {
            assert_eq!(parse(bad).as_ref().and_then(master_address), None, "{bad:?}");
        }
        for broken in [
            &b"*9999999999\r\n"[..],
            b"$5\r\nab\r\n",
            b"*2\r\n",
            b"",
            b"$-x\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
            b"*1\r\n\r\n",
            b"\r\n",
            b"\r\n\r\n",
            b"$9223372036854775807\r\n",
            b"+OK\r\n+extra\r\n",
        ] {
            assert_eq!(parse(broken), None, "{broken:?}");
        }
        let replicas = b"*3\r\n*8\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n$4\r\nport\r\n$4\r\n7001\r\n$5\r\nflags\r\n$5\r\nslave\r\n$18\r\nmaster-link-status\r\n$2\r\nok\r\n*8\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n$4\r\nport\r\n$4\r\n7002\r\n$5\r\nflags\r\n$12\r\ns_down,slave\r\n$18\r\nmaster-link-status\r\n$2\r\nok\r\n*2\r\n$2\r\nip\r\n$1\r\n?\r\n";
        let reports = replica_reports(&parse(replicas).unwrap()).unwrap();
        assert_eq!(
            reports,
            vec![
                ReplicaReport { address: addr(7001), healthy: true },
                ReplicaReport { address: addr(7002), healthy: false }
            ]
        );
        let resp3 = b"*1\r\n%2\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n$4\r\nport\r\n$4\r\n7003\r\n";
        let reports = replica_reports(&parse(resp3).unwrap()).unwrap();
        assert_eq!(reports, vec![ReplicaReport { address: addr(7003), healthy: false }], "no flags: not healthy");
    }
}
