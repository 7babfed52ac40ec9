//! The failover rules: which server is the master, whom to promote, whom to re-point.
//!
//! [`Failover::evaluate`] is a deterministic function of the topology view and the time: two proxies that see the
//! same facts decide the same. It returns [`Decision`]s for the engine to carry out (send `REPLICAOF`, start or
//! stop routing); the engine feeds the servers' answers back through the view.

use crate::address::ServerAddress;
use crate::conn::ConnId;
use crate::offset_poll::PollSchedule;
use crate::server_id::ServerId;
use crate::topology::{Role, ServerView, Views};
use smallvec::SmallVec;
use std::cmp::Reverse;
use std::time::{Duration, Instant};

/// Where the failover machine stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// No master to route writes to; `since` is when it was lost (or when watching began).
    NoMaster {
        /// When the master was lost.
        since: Instant,
    },
    /// Writes go to `master`.
    Stable {
        /// The routed master.
        master: ServerId,
    },
    /// A planned switchover (`PROXY FAILOVER`): writes are held while `target` catches up with `master`; until
    /// `deadline`, then it is aborted and `master` routed again.
    Switching {
        /// The master writes went to.
        master: ServerId,
        /// The replica to promote.
        target: ServerId,
        /// When to give up.
        deadline: Instant,
    },
    /// `REPLICAOF NO ONE` was sent to `candidate`; waiting for it to report `role:master`.
    Promoting {
        /// The replica being promoted.
        candidate: ServerId,
        /// When to give up on it and choose again.
        deadline: Instant,
        /// When the master was lost.
        since: Instant,
    },
}

/// Something the engine must do or announce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Route writes to this master from now on (it already reports `role:master`).
    Adopt {
        /// The master.
        master: ServerId,
        /// Why it was chosen.
        reason: &'static str,
    },
    /// Stop routing to this master: it is down or no longer a master.
    Lose {
        /// The former master.
        master: ServerId,
        /// Why.
        reason: &'static str,
    },
    /// Send `REPLICAOF NO ONE` to this replica.
    Promote {
        /// The chosen replica.
        candidate: ServerId,
        /// The rule that chose it, for the log.
        reason: String,
    },
    /// Send `REPLICAOF <master>` to this server.
    Repoint {
        /// The server to re-point.
        server: ServerId,
        /// Its new master.
        master: ServerId,
    },
}

/// A planned switchover (`PROXY FAILOVER`) under way, beside the [`Phase::Switching`] and [`Phase::Promoting`]
/// phases it goes through.
#[derive(Debug)]
struct Switchover {
    /// The admin client's reply slot, filled when it ends.
    requester: (ConnId, u64),
    target: ServerId,
    started: Instant,
    /// When the master had no request of a client in flight any more: offsets read after it count.
    drained_at: Option<Instant>,
    /// When to ask for the offsets again.
    poll: PollSchedule,
}

/// How often a planned switchover asks the master and its target for their offsets.
const SWITCHOVER_POLL: Duration = Duration::from_millis(10);

/// What a planned switchover needs next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SwitchoverStep {
    /// Nothing now.
    Wait,
    /// Read both offsets again.
    ReadOffsets {
        /// The master.
        master: ServerId,
        /// The replica to promote.
        target: ServerId,
    },
    /// The target has every acknowledged write: send it `REPLICAOF NO ONE`.
    Promote {
        /// The replica to promote.
        target: ServerId,
        /// Why now, for the log.
        reason: String,
    },
}

/// How a planned switchover ended, for the admin client that asked for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SwitchoverEnd {
    /// The admin client's reply slot.
    pub(crate) requester: (ConnId, u64),
    /// `Ok` with what happened, or `Err` with why it was aborted.
    pub(crate) outcome: Result<String, String>,
}

/// The failover phase machine.
#[derive(Debug)]
pub(crate) struct Failover {
    phase: Phase,
    /// The master of a `Stable` phase: kept beside it because every forwarded request asks for it.
    routed: Option<ServerId>,
    down_after: Duration,
    retry_after: Duration,
    /// Candidates that failed during the current failover; skipped until a master is confirmed.
    failed_candidates: SmallVec<[ServerId; 4]>,
    /// When servers were last sent `REPLICAOF`, so it is not repeated before their INFO could confirm it.
    repointed_at: SmallVec<[(ServerId, Instant); 4]>,
    /// The run id the routed master had when it was adopted ("" if unknown).
    master_run_id: String,
    /// After losing a master that restarted: choose again only from INFO that arrived since then.
    fresh_facts_since: Option<Instant>,
    /// The planned switchover under way.
    switchover: Option<Switchover>,
    /// How long a planned switchover may hold writes before it is aborted.
    switchover_bound: Duration,
}

/// How much longer than the master a replica's link may have been down before it is not promoted (as Sentinel).
const LINK_DOWN_FACTOR: u32 = 10;

impl Failover {
    /// A machine that starts with no master known; a planned switchover may hold writes for `switchover_bound`.
    pub(crate) fn new(
        now: Instant,
        down_after: Duration,
        check_period: Duration,
        switchover_bound: Duration,
    ) -> Failover {
        Failover {
            phase: Phase::NoMaster { since: now },
            routed: None,
            down_after,
            retry_after: check_period,
            failed_candidates: SmallVec::new(),
            master_run_id: String::new(),
            fresh_facts_since: None,
            repointed_at: SmallVec::new(),
            switchover: None,
            switchover_bound,
        }
    }

    /// A reload changed how long a planned switchover may hold writes (for the next one).
    pub(crate) fn set_switchover_bound(&mut self, bound: Duration) {
        self.switchover_bound = bound;
    }

    /// The master writes go to, if any.
    pub(crate) fn master(&self) -> Option<ServerId> {
        self.routed
    }

    /// Enters `phase`.
    fn enter(&mut self, phase: Phase) {
        self.routed = match phase {
            Phase::Stable { master } => Some(master),
            _ => None,
        };
        self.phase = phase;
    }

    /// Forgets what it kept about `server` (never the master, nor a switchover's or promotion's target: the
    /// engine refuses to remove those; were one removed, the next evaluation finds it gone and chooses again).
    pub(crate) fn remove_server(&mut self, server: ServerId) {
        self.failed_candidates.retain(|c| *c != server);
        self.repointed_at.retain(|(s, _)| *s != server);
    }

    /// Whether `server` is the master or the one being made master (it cannot be removed now).
    pub(crate) fn is_involved(&self, server: ServerId) -> bool {
        match self.phase {
            Phase::NoMaster { .. } => false,
            Phase::Stable { master } => master == server,
            Phase::Switching { master, target, .. } => master == server || target == server,
            Phase::Promoting { candidate, .. } => candidate == server,
        }
    }

    /// Starts a planned switchover for `requester` (an admin client's reply slot) to `target` (a replica of the
    /// master that is linked to it), or to the replica the failover rules would promote: new requests are held
    /// from now until it ends or the switchover bound passes. Returns the master and the target, or why it cannot
    /// start.
    pub(crate) fn begin_switchover(
        &mut self,
        now: Instant,
        views: &Views,
        target: Option<ServerId>,
        requester: (ConnId, u64),
    ) -> Result<(ServerId, ServerId), &'static str> {
        let Phase::Stable { master } = self.phase else {
            return Err("no master is routed now (a failover is under way)");
        };
        let Some(master_view) = views.get(master) else { return Err("the master is gone") };
        let linked = |id: ServerId| {
            views.get(id).is_some_and(|view| {
                view.replicates(&master_view.address)
                    && view.info.as_ref().is_some_and(|i| i.link_up && !i.sync_in_progress)
            })
        };
        let target = match target {
            Some(target) if target == master => return Err("that server is the master already"),
            Some(target) if !linked(target) => return Err("that server is not a replica linked to the master"),
            Some(target) => target,
            None => {
                let others: SmallVec<[ServerId; 4]> = views.ids().into_iter().filter(|id| !linked(*id)).collect();
                promote_candidate(views, Duration::ZERO, &others).ok_or("no replica linked to the master")?
            }
        };
        self.enter(Phase::Switching { master, target, deadline: now + self.switchover_bound });
        let poll = PollSchedule::default();
        self.switchover = Some(Switchover { requester, target, started: now, drained_at: None, poll });
        Ok((master, target))
    }

    /// Moves a planned switchover on: once the master has no request of a client in flight (`master_in_flight`),
    /// the offsets of both are polled until the target's equals the master's (every acknowledged write is on
    /// it); then the target is promoted.
    pub(crate) fn advance_switchover(
        &mut self,
        now: Instant,
        views: &Views,
        master_in_flight: usize,
    ) -> SwitchoverStep {
        let Phase::Switching { master, target, .. } = self.phase else { return SwitchoverStep::Wait };
        let Some(switchover) = self.switchover.as_mut() else { return SwitchoverStep::Wait };
        let due = switchover.poll.due(now, true, SWITCHOVER_POLL);
        // Requests already sent run to the end: their writes are acknowledged, so they must be on the target too.
        if master_in_flight > 0 {
            return SwitchoverStep::Wait;
        }
        let drained = *switchover.drained_at.get_or_insert(now);
        let fresh = |view: &ServerView| {
            view.offset_seen.as_ref().filter(|(at, _)| *at >= drained).map(|(_, info)| info.repl_offset)
        };
        let offsets = (views.get(master).and_then(fresh), views.get(target).and_then(fresh));
        if let (Some(master_offset), Some(target_offset)) = offsets {
            if master_offset == target_offset {
                // Not confirmed within down_after, the rules choose again (the old master still reports
                // role:master, so it is adopted back).
                self.enter(Phase::Promoting { candidate: target, deadline: now + self.down_after, since: now });
                let reason = format!("PROXY FAILOVER, once its offset reached the master's ({master_offset})");
                return SwitchoverStep::Promote { target, reason };
            }
        }
        if due {
            SwitchoverStep::ReadOffsets { master, target }
        } else {
            SwitchoverStep::Wait
        }
    }

    /// When a planned switchover next polls the offsets: only while it waits for the target to catch up (once the
    /// target is being promoted, the promotion's deadline is the one that counts, and a poll instant left behind
    /// would be a deadline in the past forever).
    pub(crate) fn switchover_poll(&self) -> Option<Instant> {
        match self.phase {
            Phase::Switching { .. } => self.switchover.as_ref().and_then(|s| s.poll.next()),
            _ => None,
        }
    }

    /// A master was adopted (`address`, for `reason`): the planned switchover under way, if any, ended with it,
    /// done if it is the switchover's target, aborted otherwise.
    pub(crate) fn end_switchover(
        &mut self,
        now: Instant,
        adopted: ServerId,
        address: &ServerAddress,
        reason: &str,
    ) -> Option<SwitchoverEnd> {
        let switchover = self.switchover.take()?;
        let held_ms = now.saturating_duration_since(switchover.started).as_secs_f64() * 1000.0;
        let outcome = if adopted == switchover.target {
            Ok(format!("done: {address} is the master; writes were held for {held_ms:.1} ms"))
        } else {
            Err(format!("aborted ({reason}); {address} is still the master"))
        };
        Some(SwitchoverEnd { requester: switchover.requester, outcome })
    }

    /// The switchover under way: (master, target).
    pub(crate) fn switching(&self) -> Option<(ServerId, ServerId)> {
        match self.phase {
            Phase::Switching { master, target, .. } => Some((master, target)),
            _ => None,
        }
    }

    /// Sentinel mode: writes go to `master` from now on (None: to nobody), as the sentinels decided; the rules
    /// above are never applied.
    pub(crate) fn follow(&mut self, master: Option<ServerId>, now: Instant) {
        self.enter(match master {
            Some(master) => Phase::Stable { master },
            None => Phase::NoMaster { since: now },
        });
    }

    /// Why no master is routed to, for the status snapshot (meaningless while one is).
    pub(crate) fn why_no_master(&self) -> &'static str {
        match self.phase {
            Phase::NoMaster { .. } if self.fresh_facts_since.is_some() => {
                "no master: the master was lost; waiting for fresh INFO from every server to choose"
            }
            Phase::NoMaster { .. } => "no master: no server reports role:master and none can be promoted yet",
            Phase::Promoting { .. } => "no master: a replica is being promoted",
            Phase::Switching { .. } => "no master: a planned switchover holds writes until the target catches up",
            Phase::Stable { .. } => "a master is routed",
        }
    }

    /// When the machine next needs to be evaluated even if no fact changes (a promotion deadline).
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Promoting { deadline, .. } | Phase::Switching { deadline, .. } => Some(deadline),
            _ => None,
        }
    }

    /// Applies the rules to the current view and returns what to do, in order.
    pub(crate) fn evaluate(&mut self, views: &Views, now: Instant) -> SmallVec<[Decision; 4]> {
        let mut decisions = SmallVec::new();
        if let Phase::Switching { master, target, deadline } = self.phase {
            // A master lost meanwhile is handled as in Stable below; a target too slow (or gone) aborts the
            // switchover.
            let master_down = views.get(master).is_none_or(ServerView::is_down);
            if master_down || now >= deadline || !views.contains(target) {
                self.enter(Phase::Stable { master });
                if !master_down {
                    decisions.push(Decision::Adopt {
                        master,
                        reason: "planned switchover aborted: the target did not catch up in time",
                    });
                }
            }
        }
        if let Phase::Stable { master } = self.phase {
            let Some(view) = views.get(master) else {
                decisions.push(Decision::Lose { master, reason: "it is no longer a server of this proxy" });
                self.enter(Phase::NoMaster { since: now });
                self.fresh_facts_since = Some(now);
                return decisions;
            };
            // Whatever the reason, the next choice waits for INFO that every running server sent after the loss
            // (the engine probes them at once): a choice made from the round of INFO that revealed the loss could
            // rest on another server's older INFO and contradict the proxy that caused the change.
            if view.is_down() {
                decisions.push(Decision::Lose { master, reason: "it is down" });
                self.enter(Phase::NoMaster { since: now });
                self.fresh_facts_since = Some(now);
            } else if view.is(Role::Replica) {
                decisions.push(Decision::Lose { master, reason: "it now reports role:slave" });
                self.enter(Phase::NoMaster { since: now });
                self.fresh_facts_since = Some(now);
            } else if view.info.is_some() && !self.master_run_id.is_empty() && view.run_id() != self.master_run_id {
                // It restarted within down_after: its data is as of the crash, and another proxy that did count it
                // down may have promoted a replica meanwhile. Choose again from the facts, as that proxy did, rather
                // than re-point the other master to this one (two proxies would undo each other's choice forever).
                decisions.push(Decision::Lose { master, reason: "it restarted (new run id)" });
                self.enter(Phase::NoMaster { since: now });
                self.fresh_facts_since = Some(now);
            } else if let Some(newer) = superseding_master(views, master) {
                // Another proxy (or an operator) promoted a replica of our master: that master continues our
                // master's history, so it is the newer one. Every proxy that sees both follows it, instead of each
                // re-pointing the other's choice.
                decisions.push(Decision::Lose { master, reason: "one of its replicas was promoted" });
                decisions.push(Decision::Adopt { master: newer, reason: "it was promoted from the master's history" });
                self.enter(Phase::Stable { master: newer });
                self.master_run_id = views.get(newer).map_or("", ServerView::run_id).to_string();
            }
        }
        if let Phase::Promoting { candidate, deadline, since } = self.phase {
            let view = views.get(candidate);
            if let Some(view) = view.filter(|v| v.is(Role::Master)) {
                self.failed_candidates.clear();
                self.enter(Phase::Stable { master: candidate });
                self.master_run_id = view.run_id().to_string();
                decisions.push(Decision::Adopt { master: candidate, reason: "promotion confirmed by INFO" });
            } else if view.is_none_or(ServerView::is_down) || now >= deadline {
                self.failed_candidates.push(candidate);
                self.enter(Phase::NoMaster { since });
            }
        }
        if let Phase::NoMaster { since } = self.phase {
            let stale = self.fresh_facts_since.is_some_and(|t| {
                views
                    .values()
                    .any(|v| !v.is_down() && !v.failures.credentials_refused() && v.info_at.is_none_or(|at| at < t))
            });
            if stale {
                return decisions;
            }
            self.fresh_facts_since = None;
            let master = if facts_known_or_unreachable(views) { existing_master(views) } else { None };
            if let Some(master) = master {
                self.failed_candidates.clear();
                self.enter(Phase::Stable { master });
                self.master_run_id = views.get(master).map_or("", ServerView::run_id).to_string();
                decisions.push(Decision::Adopt { master, reason: "it reports role:master" });
            } else if facts_complete(views) {
                let down_for = now.saturating_duration_since(since);
                let limit = down_for + self.down_after * LINK_DOWN_FACTOR;
                let chosen = promote_candidate(views, limit, &self.failed_candidates)
                    .and_then(|c| Some((c, views.get(c)?, views.get(c)?.info.as_ref()?)));
                match chosen {
                    Some((candidate, view, info)) => {
                        decisions.push(Decision::Promote {
                            candidate,
                            reason: format!(
                                "lowest priority ({}), then highest offset ({}), then run id {}",
                                info.priority,
                                info.repl_offset,
                                view.run_id()
                            ),
                        });
                        self.enter(Phase::Promoting { candidate, deadline: now + self.down_after, since });
                    }
                    None => self.failed_candidates.clear(),
                }
            }
        }
        if let Phase::Stable { master } = self.phase {
            self.repoint_others(views, master, now, &mut decisions);
        }
        decisions
    }

    fn repoint_others(
        &mut self,
        views: &Views,
        master: ServerId,
        now: Instant,
        decisions: &mut SmallVec<[Decision; 4]>,
    ) {
        let Some(master_view) = views.get(master) else { return };
        // Re-point only while the master plainly answers. A master that has been silent for half of `down_after`
        // may be dead: another proxy may already have counted it down and promoted a replica, and re-pointing that
        // new master (or its replicas) to the silent one would undo the failover. (Another proxy promotes at the
        // earliest `down_after - check_period` after our last valid reply, more than `down_after / 2` with the
        // default `down_after` of 3 x `check_period`; a healthy master answers every `check_period`.)
        let silent_for = master_view.last_ok.map(|ok| now.saturating_duration_since(ok));
        if silent_for.is_none_or(|silent| silent > self.down_after / 2) {
            return;
        }
        let master_address = &master_view.address;
        for (server, view) in views.iter() {
            if server == master || view.is_down() || view.info.is_none() {
                continue;
            }
            // The same process as the master, watched under another address (`localhost` beside `127.0.0.1`):
            // re-pointing it would make the master a replica of itself.
            if !view.run_id().is_empty() && view.run_id() == master_view.run_id() {
                continue;
            }
            let misplaced = view.is(Role::Master) || (view.is(Role::Replica) && !view.replicates(master_address));
            // Re-point only on evidence of the master as fresh as the evidence about this server: a replica another
            // proxy promoted because our master just died must not be sent back to it before this proxy has heard
            // from the master in the same probe round (it would hear the refusal instead).
            let master_ok = master_view.last_ok;
            let master_answered_since =
                view.info_at.is_none_or(|seen| master_ok.is_some_and(|ok| ok + self.retry_after / 2 >= seen));
            if misplaced && !master_answered_since {
                continue;
            }
            let last = self.repointed_at.iter().position(|(s, _)| *s == server);
            if !misplaced {
                if let Some(at) = last {
                    self.repointed_at.swap_remove(at);
                }
                continue;
            }
            match last {
                Some(at) if now.saturating_duration_since(self.repointed_at[at].1) < self.retry_after => {}
                Some(at) => {
                    self.repointed_at[at].1 = now;
                    decisions.push(Decision::Repoint { server, master });
                }
                None => {
                    self.repointed_at.push((server, now));
                    decisions.push(Decision::Repoint { server, master });
                }
            }
        }
    }
}

/// A server that reports `role:master` and continues the replication history of `master` (its `master_replid2`
/// is `master`'s `master_replid`): it was promoted from `master`'s replicas after `master` last changed history.
/// Only a promotion in place counts (the same run id as when it was a replica): a replica that restarted comes
/// up as a master with the same history ids, behind the master it left, and following it would throw away the
/// writes it missed (the chaos soak lost WAIT-confirmed writes that way).
pub(crate) fn superseding_master(views: &Views, master: ServerId) -> Option<ServerId> {
    let master_view = views.get(master)?;
    views
        .iter()
        .find(|(id, v)| {
            *id != master && v.is(Role::Master) && v.promoted_in_place && v.continues_history_of(master_view)
        })
        .map(|(id, _)| id)
}

/// Whether every server is either down or has reported INFO: only then may a replica be promoted, so that a
/// master that merely has not answered yet is never replaced.
fn facts_complete(views: &Views) -> bool {
    views.values().all(|v| v.is_down() || v.info.is_some())
}

/// Whether every server has reported INFO, is down, refused the probe's connection or the proxy's credentials:
/// enough to choose among the masters that exist (a server that cannot be reached or used now cannot be a better
/// master), without waiting `down_after` for a server that is plainly not there. (A server refusing the
/// credentials still blocks a promotion, in `facts_complete`: it may be the master, and a wrong password is no
/// reason to fail over.)
fn facts_known_or_unreachable(views: &Views) -> bool {
    views.values().all(|v| v.is_down() || v.info.is_some() || v.is_unreachable() || v.failures.credentials_refused())
}

/// The master to adopt among servers that already report `role:master`: most attached replicas, then highest
/// replication offset, then lowest run id.
pub(crate) fn existing_master(views: &Views) -> Option<ServerId> {
    views
        .iter()
        .filter(|(_, v)| v.is(Role::Master))
        .max_by_key(|(id, v)| {
            let attached = views.values().filter(|r| r.replicates(&v.address)).count();
            let offset = v.info.as_ref().map_or(0, |i| i.repl_offset);
            (attached, offset, Reverse(v.run_id()), Reverse(*id))
        })
        .map(|(id, _)| id)
}

/// The replica to promote: reachable, priority not 0, link not down longer than `link_down_limit`, not in
/// `excluded`; then lowest priority, highest replication offset, lowest run id.
pub(crate) fn promote_candidate(views: &Views, link_down_limit: Duration, excluded: &[ServerId]) -> Option<ServerId> {
    views
        .iter()
        .filter(|(id, v)| v.is(Role::Replica) && !excluded.contains(id))
        .filter_map(|(id, v)| Some((id, v, v.info.as_ref()?)))
        .filter(|(_, _, info)| {
            let link_ok =
                info.link_up || info.link_down_since_secs.is_none_or(|s| Duration::from_secs(s) <= link_down_limit);
            info.priority != 0 && link_ok
        })
        .min_by_key(|(id, v, info)| (info.priority, Reverse(info.repl_offset), v.run_id(), *id))
        .map(|(id, _, _)| id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::ServerAddress;
    use crate::topology::Health;
    use crate::topology::ReplicationInfo;

    fn view(port: u16, now: Instant, info: Option<ReplicationInfo>) -> ServerView {
        let mut v = ServerView::new(ServerAddress { host: "127.0.0.1".into(), port }, now);
        v.last_ok = Some(now);
        v.info = info;
        v
    }

    fn master_info(run_id: &str) -> ReplicationInfo {
        ReplicationInfo { role: Some(Role::Master), priority: 100, run_id: Some(run_id.into()), ..Default::default() }
    }

    fn replica_info(of: u16, offset: i64, priority: i64, run_id: &str) -> ReplicationInfo {
        ReplicationInfo {
            role: Some(Role::Replica),
            master: Some(("127.0.0.1".into(), of)),
            link_up: true,
            repl_offset: offset,
            priority,
            run_id: Some(run_id.into()),
            ..Default::default()
        }
    }

    #[test]
    fn adopts_existing_setup_without_repointing() {
        let now = Instant::now();
        let views: Views = Views::from_iter([
            view(1, now, Some(replica_info(2, 10, 100, "a"))),
            view(2, now, Some(master_info("b"))),
            view(3, now, Some(replica_info(2, 10, 100, "c"))),
        ]);
        let mut failover = Failover::new(now, Duration::from_secs(3), Duration::from_secs(1), Duration::from_secs(1));
        let decisions = failover.evaluate(&views, now);
        assert_eq!(
            decisions.as_slice(),
            &[Decision::Adopt { master: ServerId::first(1), reason: "it reports role:master" }]
        );
    }

    #[test]
    fn promotes_by_priority_then_offset_then_run_id() {
        let now = Instant::now();
        let mut views: Views = Views::from_iter([
            view(1, now, Some(master_info("m"))),
            view(2, now, Some(replica_info(1, 50, 100, "b"))),
            view(3, now, Some(replica_info(1, 90, 100, "c"))),
            view(4, now, Some(replica_info(1, 99, 0, "d"))),
        ]);
        let mut failover = Failover::new(now, Duration::from_secs(3), Duration::from_secs(1), Duration::from_secs(1));
        let _ = failover.evaluate(&views, now);
        views[0].health = Health::Down;
        let decisions = failover.evaluate(&views, now);
        assert_eq!(decisions.as_slice(), &[Decision::Lose { master: ServerId::first(0), reason: "it is down" }]);
        // The choice waits for INFO sent after the loss.
        let later = now + Duration::from_millis(1);
        for (_, v) in views.iter_mut().skip(1) {
            v.info_at = Some(later);
        }
        let decisions = failover.evaluate(&views, later);
        assert!(matches!(decisions[0], Decision::Promote { candidate, .. } if candidate == ServerId::first(2)));
        // Confirmed: the others (and the old master once it returns) are re-pointed.
        views[2].info = Some(master_info("c"));
        views[0].health = Health::Up;
        let decisions = failover.evaluate(&views, now);
        assert!(matches!(decisions[0], Decision::Adopt { master, .. } if master == ServerId::first(2)));
        let repointed: Vec<_> = decisions[1..]
            .iter()
            .map(|d| match d {
                Decision::Repoint { server, .. } => server.slot(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(repointed, vec![0, 1, 3]);
    }

    #[test]
    fn several_masters_wait_for_every_server_then_the_one_with_replicas_wins() {
        let now = Instant::now();
        let mut views: Views =
            Views::from_iter([view(1, now, Some(master_info("a"))), view(2, now, None), view(3, now, None)]);
        let mut failover = Failover::new(now, Duration::from_secs(3), Duration::from_secs(1), Duration::from_secs(1));
        assert!(failover.evaluate(&views, now).is_empty(), "server 2 and 3 have not answered yet");
        views[1].info = Some(master_info("b"));
        views[2].info = Some(replica_info(2, 0, 100, "c"));
        let decisions = failover.evaluate(&views, now);
        assert!(matches!(decisions[0], Decision::Adopt { master, .. } if master == ServerId::first(1)));
        assert_eq!(decisions[1], Decision::Repoint { server: ServerId::first(0), master: ServerId::first(1) });
    }

    #[test]
    fn does_not_repoint_a_new_master_to_a_silent_one() {
        // Found by the simulation: this proxy's master has crashed but is not yet down here; another proxy has
        // already promoted server 1. Re-pointing server 1 to the silent master would undo that failover.
        let start = Instant::now();
        let down_after = Duration::from_secs(3);
        let mut views: Views = Views::from_iter([
            view(1, start, Some(master_info("a"))),
            view(2, start, Some(replica_info(1, 10, 100, "b"))),
            view(3, start, Some(replica_info(1, 10, 100, "c"))),
        ]);
        let mut failover = Failover::new(start, down_after, Duration::from_secs(1), Duration::from_secs(1));
        let _ = failover.evaluate(&views, start);
        let later = start + Duration::from_millis(2_000);
        views[1].info = Some(master_info("b"));
        views[1].last_ok = Some(later);
        views[2].info = Some(replica_info(2, 10, 100, "c"));
        views[2].last_ok = Some(later);
        assert!(failover.evaluate(&views, later).is_empty());
        // While the master answers, the stray master is re-pointed as before.
        views[0].last_ok = Some(later);
        let decisions = failover.evaluate(&views, later);
        assert_eq!(decisions[0], Decision::Repoint { server: ServerId::first(1), master: ServerId::first(0) });
    }

    #[test]
    fn a_restarted_master_is_chosen_again_from_fresh_facts() {
        // Found by the simulation: our master restarted within down_after while another proxy promoted server 1.
        let start = Instant::now();
        let mut views: Views = Views::from_iter([
            view(1, start, Some(master_info("a"))),
            view(2, start, Some(replica_info(1, 10, 100, "b"))),
        ]);
        let mut failover = Failover::new(start, Duration::from_secs(3), Duration::from_secs(1), Duration::from_secs(1));
        let _ = failover.evaluate(&views, start);
        let later = start + Duration::from_millis(2_900);
        views[0].info = Some(ReplicationInfo { repl_offset: 10, ..master_info("a2") });
        views[0].last_ok = Some(later);
        views[0].info_at = Some(later);
        let decisions = failover.evaluate(&views, later);
        assert_eq!(
            decisions.as_slice(),
            &[Decision::Lose { master: ServerId::first(0), reason: "it restarted (new run id)" }]
        );
        // Server 1's INFO of this round: it is a master with more data, so it is the one to route to.
        views[1].info = Some(ReplicationInfo { repl_offset: 12, ..master_info("b") });
        views[1].info_at = Some(later);
        views[1].last_ok = Some(later);
        let decisions = failover.evaluate(&views, later);
        assert!(matches!(decisions[0], Decision::Adopt { master, .. } if master == ServerId::first(1)));
        assert_eq!(decisions[1], Decision::Repoint { server: ServerId::first(0), master: ServerId::first(1) });
    }

    /// `info` with replication ids: the history it serves, and the one it continued when promoted.
    fn with_ids(info: ReplicationInfo, replid: &str, replid2: Option<&str>) -> ReplicationInfo {
        ReplicationInfo { replid: Some(replid.into()), replid2: replid2.map(Into::into), ..info }
    }

    /// Server 0 a master (run id "a", history "history-a"), server 1 its replica (run id "b"), and a failover
    /// machine that has adopted server 0.
    fn master_a_with_replica_b() -> (Instant, Views, Failover) {
        let now = Instant::now();
        let views: Views = Views::from_iter([
            view(1, now, Some(with_ids(master_info("a"), "history-a", None))),
            view(2, now, Some(replica_info(1, 10, 100, "b"))),
        ]);
        let mut failover = Failover::new(now, Duration::from_secs(3), Duration::from_secs(1), Duration::from_secs(1));
        let _ = failover.evaluate(&views, now);
        (now, views, failover)
    }

    #[test]
    fn a_master_promoted_from_ours_is_followed_and_ours_re_pointed() {
        // Another proxy, cut off from server 0, promoted server 1; this proxy still reaches server 0.
        let (now, mut views, mut failover) = master_a_with_replica_b();
        // The monitor saw it report role:slave with run id "b", then role:master with the same run id.
        views[1].info = Some(with_ids(master_info("b"), "history-b", Some("history-a")));
        views[1].promoted_in_place = true;
        let decisions = failover.evaluate(&views, now);
        assert!(matches!(decisions[0], Decision::Lose { master, .. } if master == ServerId::first(0)));
        assert!(matches!(decisions[1], Decision::Adopt { master, .. } if master == ServerId::first(1)));
        assert_eq!(decisions[2], Decision::Repoint { server: ServerId::first(0), master: ServerId::first(1) });
        // The proxy on server 1 sees server 0 as a stray master (no shared history the other way): re-point it.
        let mut other = Failover::new(now, Duration::from_secs(3), Duration::from_secs(1), Duration::from_secs(1));
        let mut only_b = views.clone();
        only_b[0].health = Health::Unreachable;
        only_b[0].info = None;
        let _ = other.evaluate(&only_b, now);
        assert_eq!(other.master(), Some(ServerId::first(1)));
        let decisions = other.evaluate(&views, now);
        assert_eq!(
            decisions.as_slice(),
            &[Decision::Repoint { server: ServerId::first(0), master: ServerId::first(1) }]
        );
    }

    /// Found by the chaos soak: a replica killed and restarted without its `replicaof` comes up as a master from its
    /// RDB file, reporting the master's history as `master_replid2`, behind the master. It is re-pointed, not
    /// followed.
    #[test]
    fn a_replica_restarted_as_master_is_re_pointed_not_followed() {
        let (now, mut views, mut failover) = master_a_with_replica_b();
        views[1].info = Some(with_ids(master_info("b-restarted"), "history-new", Some("history-a")));
        views[1].promoted_in_place = false;
        let decisions = failover.evaluate(&views, now);
        assert_eq!(failover.master(), Some(ServerId::first(0)));
        assert_eq!(
            decisions.as_slice(),
            &[Decision::Repoint { server: ServerId::first(1), master: ServerId::first(0) }]
        );
    }

    #[test]
    fn waits_for_every_server_before_promoting() {
        let now = Instant::now();
        let views: Views = Views::from_iter([view(1, now, None), view(2, now, Some(replica_info(1, 5, 100, "b")))]);
        let mut failover = Failover::new(now, Duration::from_secs(3), Duration::from_secs(1), Duration::from_secs(1));
        assert!(failover.evaluate(&views, now).is_empty());
    }

    #[test]
    fn a_planned_switchover_promotes_once_the_target_has_every_write_and_reports_to_its_requester() {
        let now = Instant::now();
        let mut views: Views = Views::from_iter([
            view(1, now, Some(master_info("a"))),
            view(2, now, Some(replica_info(1, 10, 100, "b"))),
            view(3, now, Some(replica_info(1, 10, 100, "c"))),
        ]);
        let mut failover = Failover::new(now, Duration::from_secs(3), Duration::from_secs(1), Duration::from_secs(1));
        let _ = failover.evaluate(&views, now);
        let (master, target) = (ServerId::first(0), ServerId::first(2));
        let requester = crate::conn::client_and_backend_ids().0;
        assert_eq!(
            failover.begin_switchover(now, &views, Some(master), (requester, 1)),
            Err("that server is the master already")
        );
        assert_eq!(failover.begin_switchover(now, &views, Some(target), (requester, 1)), Ok((master, target)));
        assert_eq!(failover.master(), None, "writes are held");
        // Requests of clients still in flight on the master: nothing yet (the poll schedule starts all the same).
        assert_eq!(failover.advance_switchover(now, &views, 1), SwitchoverStep::Wait);
        let drained = now + SWITCHOVER_POLL;
        assert_eq!(failover.advance_switchover(drained, &views, 0), SwitchoverStep::ReadOffsets { master, target });
        assert_eq!(failover.switchover_poll(), Some(drained + SWITCHOVER_POLL));
        // Offsets read after the drain: the target is behind, then it has caught up.
        let reading = |offset| Some((drained, ReplicationInfo { repl_offset: offset, ..Default::default() }));
        views[0].offset_seen = reading(120);
        views[2].offset_seen = reading(110);
        assert_eq!(failover.advance_switchover(drained, &views, 0), SwitchoverStep::Wait, "polled within 10 ms");
        views[2].offset_seen = reading(120);
        let step = failover.advance_switchover(drained, &views, 0);
        assert!(matches!(step, SwitchoverStep::Promote { target: t, .. } if t == target), "{step:?}");
        assert_eq!(failover.switchover_poll(), None, "no poll while the promotion awaits confirmation");
        // Its INFO confirms the promotion: adopted, and the requester hears it is done.
        views[2].info = Some(master_info("c"));
        views[0].info = Some(replica_info(3, 120, 100, "a"));
        let decisions = failover.evaluate(&views, drained);
        assert!(matches!(decisions[0], Decision::Adopt { master, .. } if master == target));
        let end = failover.end_switchover(drained, target, &views[2].address, "promotion confirmed by INFO");
        let end = end.expect("the switchover ends");
        assert_eq!(end.requester, (requester, 1));
        assert!(matches!(&end.outcome, Ok(text) if text.starts_with("done: 127.0.0.1:3 is the master")), "{end:?}");
        assert_eq!(failover.end_switchover(drained, target, &views[2].address, ""), None, "it ended once");
    }

    #[test]
    fn a_planned_switchover_whose_target_is_gone_is_aborted() {
        let now = Instant::now();
        let mut views: Views =
            Views::from_iter([view(1, now, Some(master_info("a"))), view(2, now, Some(replica_info(1, 10, 100, "b")))]);
        let mut failover = Failover::new(now, Duration::from_secs(3), Duration::from_secs(1), Duration::from_secs(1));
        let _ = failover.evaluate(&views, now);
        let requester = crate::conn::client_and_backend_ids().0;
        assert!(failover.begin_switchover(now, &views, None, (requester, 7)).is_ok(), "the rules pick the replica");
        views.remove(ServerId::first(1));
        let decisions = failover.evaluate(&views, now);
        assert!(matches!(decisions[0], Decision::Adopt { master, .. } if master == ServerId::first(0)));
        let end = failover.end_switchover(now, ServerId::first(0), &views[0].address, "aborted").expect("it ends");
        assert!(end.outcome.is_err(), "{end:?}");
    }
}
