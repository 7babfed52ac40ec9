//! The simulated clients: each writes unique keys, reads back what it wrote, now and then asks `WAIT 1 50`, and
//! checks every reply. A `WAIT` must never report more replicas than hold every write the client sent since its
//! previous `WAIT` (invariant 8).
//!
//! With mixed traffic (`Scenario::mixed_traffic`) a client also sends numbered `ECHO`s, `MULTI`/`SET`/`ECHO`/`EXEC`
//! transactions and `SCAN` iterations over its own keys (`SCAN cursor MATCH c<client>:* COUNT 50`, one call in
//! flight, the next call sent with the cursor the last one returned, steps later), often several requests in
//! one write (a pipeline). Every reply is matched to the request in its place: an `ECHO` or `EXEC` answered
//! with another request's tag is a reply out of order (invariant 9). A `SCAN` iteration that ends must have
//! returned every key the server that finished it held throughout (invariant 10).

use super::Sim;
use crate::config::Mode;
use crate::resp::{Limits, ReplyScanner, Request};
use crate::ConnId;
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeSet, VecDeque};

/// Most requests a simulated client has in flight before it waits.
const MAX_OUTSTANDING: usize = 8;

/// Keys a `SCAN` call examines.
const SCAN_COUNT: &str = "50";

pub(super) enum Op {
    Set {
        key: Bytes,
        value: Bytes,
        last: bool,
    },
    Get {
        key: Bytes,
        value: Bytes,
    },
    /// `WAIT 1 50`, after the `SET`s of these keys.
    Wait {
        keys: Vec<Bytes>,
    },
    /// `ECHO` of a tag unique to this client and request.
    Echo {
        tag: Bytes,
    },
    /// The next call of the client's `SCAN` iteration.
    Scan,
    /// `MULTI`, then its two queued commands.
    Multi,
    Queued,
    /// The `EXEC` of `MULTI`, `SET key value`, `ECHO tag`.
    Exec {
        key: Bytes,
        value: Bytes,
        tag: Bytes,
    },
}

/// A `SCAN` iteration in progress.
pub(super) struct ScanIteration {
    /// The cursor of the call in flight, or of the next call.
    pub(super) cursor: u64,
    /// Whether a call is in flight.
    pub(super) in_flight: bool,
    /// The keys returned so far.
    pub(super) seen: BTreeSet<Bytes>,
    /// Not checked: at some point of it the engine did not split reads (`allToMaster`, where every cursor goes
    /// to the master, even across a failover, as documented).
    pub(super) exempt: bool,
    /// Per server removal that began during it: (the server serving it then, the removed one).
    pub(super) removals: Vec<(usize, usize)>,
}

pub(super) struct Client {
    pub(super) engine: usize,
    pub(super) conn: ConnId,
    /// Requests written and not yet handed to the engine (it is not reading this client).
    pub(super) to_engine: BytesMut,
    pub(super) from_engine: BytesMut,
    pub(super) scanner: ReplyScanner,
    pub(super) outstanding: VecDeque<Op>,
    pub(super) readable: bool,
    pub(super) next_at: u64,
    pub(super) sent: u64,
    pub(super) acked: Vec<(Bytes, Bytes)>,
    /// Keys of the `SET`s sent since the last `WAIT`.
    pub(super) unwaited: Vec<Bytes>,
    /// The mixed traffic's random state (None: `SET`, `GET` and `WAIT` only, in a fixed pattern).
    pub(super) mixed: Option<u64>,
    /// `ECHO` tags sent so far.
    pub(super) echoes: u64,
    /// The `SCAN` iteration in progress, if any.
    pub(super) scan: Option<ScanIteration>,
    /// It sent `MULTI` and has had a reply outstanding ever since: it may hold a private connection (the engine
    /// gives it back once the transaction is over and nothing is in flight on it).
    pub(super) may_be_pinned: bool,
    /// A request got the error of a lost connection while it may have been pinned: the engine closes a client
    /// whose private connection is lost (the state it built on the server is gone), and this one then connects
    /// again.
    pub(super) private_lost: bool,
}

impl Client {
    /// A client of engine `engine` on `conn` that sends its first request at `first_at` ms; with mixed traffic
    /// when `mixed` is a seed.
    pub(super) fn new(engine: usize, conn: ConnId, first_at: u64, mixed: Option<u64>) -> Client {
        Client {
            engine,
            conn,
            to_engine: BytesMut::new(),
            from_engine: BytesMut::new(),
            scanner: ReplyScanner::new(Limits::default()),
            outstanding: VecDeque::new(),
            readable: true,
            next_at: first_at,
            sent: 0,
            acked: Vec::new(),
            unwaited: Vec::new(),
            mixed,
            echoes: 0,
            scan: None,
            may_be_pinned: false,
            private_lost: false,
        }
    }

    /// The next number of the mixed traffic's generator (splitmix64).
    fn random(&mut self) -> u64 {
        let state = self.mixed.get_or_insert(0);
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A new `SET` of a key unique to this client.
    fn new_set(&mut self, index: usize, n: u64, last: bool) -> Op {
        let key = Bytes::from(format!("c{index}:{n}"));
        let value = Bytes::from(format!("v{index}:{n}"));
        self.unwaited.push(key.clone());
        Op::Set { key, value, last }
    }

    fn new_echo(&mut self, index: usize) -> Bytes {
        self.echoes += 1;
        Bytes::from(format!("e{index}:{}", self.echoes))
    }
}

impl Sim<'_> {
    pub(super) fn client_send(&mut self, index: usize) -> Result<(), String> {
        let client = &mut self.clients[index];
        client.next_at = self.clock.ms() + self.scenario.client_interval_ms.max(1);
        if self.clock.ms() >= self.converge_at {
            client.next_at = u64::MAX;
        }
        if client.outstanding.len() >= MAX_OUTSTANDING {
            return Ok(());
        }
        let last = self.clock.ms() >= self.converge_at;
        let requests = if client.mixed.is_some() && !last {
            // A pipeline now and then: up to four requests in one write.
            let burst = if client.random() % 10 < 3 { 2 + client.random() % 3 } else { 1 };
            let mut requests = Vec::new();
            for _ in 0..burst {
                if self.clients[index].outstanding.len() >= MAX_OUTSTANDING {
                    break;
                }
                requests.extend(self.mixed_requests(index));
            }
            requests
        } else {
            let client = &mut self.clients[index];
            let n = client.sent;
            client.sent += 1;
            let op = if n % 5 == 4 && !client.unwaited.is_empty() && !last {
                Op::Wait { keys: std::mem::take(&mut client.unwaited) }
            } else if n % 3 == 2 && !client.acked.is_empty() && !last {
                let (key, value) = client.acked[(n as usize * 7) % client.acked.len()].clone();
                Op::Get { key, value }
            } else {
                client.new_set(index, n, last)
            };
            vec![(request_of(&op), op)]
        };
        let client = &mut self.clients[index];
        for (request, op) in requests {
            self.outcome.requests += 1;
            client.outstanding.push_back(op);
            client.to_engine.extend_from_slice(request.frame());
        }
        self.feed_client(index)
    }

    /// The next request (a transaction: four) of mixed traffic, with what each awaits.
    fn mixed_requests(&mut self, index: usize) -> Vec<(Request, Op)> {
        let reads_split = self.configs[self.clients[index].engine].mode == Mode::ReadsToSlaves;
        let client = &mut self.clients[index];
        let n = client.sent;
        client.sent += 1;
        let roll = client.random() % 100;
        let scan_idle = client.scan.as_ref().is_none_or(|scan| !scan.in_flight);
        let op = match roll {
            0..=29 => client.new_set(index, n, false),
            30..=44 if !client.acked.is_empty() => {
                let pick = (client.random() % client.acked.len() as u64) as usize;
                let (key, value) = client.acked[pick].clone();
                Op::Get { key, value }
            }
            45..=49 if !client.unwaited.is_empty() => Op::Wait { keys: std::mem::take(&mut client.unwaited) },
            50..=74 if scan_idle => {
                let scan = client.scan.get_or_insert_with(|| ScanIteration {
                    cursor: 0,
                    in_flight: false,
                    seen: BTreeSet::new(),
                    exempt: false,
                    removals: Vec::new(),
                });
                scan.in_flight = true;
                scan.exempt |= !reads_split;
                let cursor = scan.cursor.to_string();
                if scan.cursor == 0 {
                    // A new iteration: what servers did for an earlier one is no longer of interest.
                    self.scan_traces[index].clear();
                }
                let pattern = format!("c{index}:*");
                let args = ["SCAN", &cursor, "MATCH", &pattern, "COUNT", SCAN_COUNT];
                return vec![(Request::from_args(&args), Op::Scan)];
            }
            75..=84 => {
                let key = Bytes::from(format!("c{index}:{n}"));
                let value = Bytes::from(format!("v{index}:{n}"));
                let tag = client.new_echo(index);
                // A `WAIT` sent after the `EXEC` covers its write, whenever the `EXEC`'s reply comes.
                client.unwaited.push(key.clone());
                let set = Request::from_args(&[b"SET".as_slice(), &key, &value]);
                let echo = Request::from_args(&[b"ECHO".as_slice(), &tag]);
                client.may_be_pinned = true;
                return vec![
                    (Request::from_args(&["MULTI"]), Op::Multi),
                    (set, Op::Queued),
                    (echo, Op::Queued),
                    (Request::from_args(&["EXEC"]), Op::Exec { key, value, tag }),
                ];
            }
            _ => Op::Echo { tag: client.new_echo(index) },
        };
        vec![(request_of(&op), op)]
    }

    pub(super) fn feed_client(&mut self, index: usize) -> Result<(), String> {
        let client = &mut self.clients[index];
        if !client.readable || client.to_engine.is_empty() {
            return Ok(());
        }
        let (e, conn) = (client.engine, client.conn);
        let data = client.to_engine.split();
        self.driver(e).feed(conn, &data);
        self.drain(e)
    }

    pub(super) fn client_receive(&mut self, index: usize, data: &[u8]) -> Result<(), String> {
        let client = &mut self.clients[index];
        client.from_engine.extend_from_slice(data);
        loop {
            let client = &mut self.clients[index];
            let reply = match client.scanner.next_reply(&mut client.from_engine) {
                Ok(Some(reply)) => reply,
                Ok(None) => return Ok(()),
                Err(error) => return Err(format!("client {index} got a malformed reply: {error}")),
            };
            let Some(op) = client.outstanding.pop_front() else {
                return Err(format!("client {index} got a reply it did not ask for: {:?}", show(&reply)));
            };
            let error = reply.first() == Some(&b'-');
            if error {
                self.outcome.errors += 1;
            }
            let client = &mut self.clients[index];
            client.private_lost |= client.may_be_pinned && error && lost_connection(&reply);
            client.may_be_pinned &= !client.outstanding.is_empty();
            match op {
                Op::Set { key, value, last } => {
                    if &reply[..] == b"+OK\r\n" {
                        self.outcome.acked_writes += 1;
                        self.clients[index].acked.push((key, value));
                    } else if !error {
                        return Err(format!("client {index}: SET {key:?} got {:?}", show(&reply)));
                    } else if last {
                        self.late_failures.push(format!("client {index}: {}", show(&reply)));
                    }
                }
                Op::Get { key, value } => {
                    let expected = crate::resp::bulk_reply(&value);
                    if !error && &reply[..] != b"$-1\r\n" && reply != expected {
                        return Err(format!("client {index}: GET {key:?} got {:?}, wrote {value:?}", show(&reply)));
                    }
                }
                Op::Wait { keys } if !error => {
                    let reported = std::str::from_utf8(&reply[..])
                        .ok()
                        .and_then(|r| r.strip_prefix(':')?.trim_end().parse::<usize>().ok())
                        .ok_or_else(|| format!("client {index}: WAIT got {:?}", show(&reply)))?;
                    self.outcome.waits += 1;
                    self.outcome.waits_confirmed += u64::from(reported > 0);
                    self.check_wait(index, &keys, reported)?;
                }
                Op::Wait { .. } => {}
                Op::Echo { tag } => {
                    if reply == crate::resp::bulk_reply(&tag) {
                        self.outcome.echoes += 1;
                    } else if !error {
                        return Err(format!("client {index}: ECHO {tag:?} got {:?} (out of order)", show(&reply)));
                    }
                }
                Op::Multi if !error && &reply[..] != b"+OK\r\n" => {
                    return Err(format!("client {index}: MULTI got {:?}", show(&reply)));
                }
                Op::Queued if !error && &reply[..] != b"+QUEUED\r\n" => {
                    return Err(format!("client {index}: a command in MULTI got {:?}", show(&reply)));
                }
                Op::Multi | Op::Queued => {}
                Op::Exec { key, value, tag } => {
                    let mut ran = BytesMut::from(&b"*2\r\n+OK\r\n"[..]);
                    ran.extend_from_slice(&crate::resp::bulk_reply(&tag));
                    if reply == ran {
                        self.outcome.transactions += 1;
                        self.outcome.acked_writes += 1;
                        self.clients[index].acked.push((key, value));
                    } else if !error {
                        return Err(format!("client {index}: EXEC of {tag:?} got {:?} (out of order)", show(&reply)));
                    }
                }
                Op::Scan => self.scan_reply(index, &reply)?,
            }
        }
    }

    /// The engine closed client `index` after its private connection was lost (checked by the caller): it
    /// connects again, as a new connection. What it wrote and the engine never read is lost, unanswered and not
    /// run; its `SCAN` iteration starts again (a cursor is known only on the connection it was returned on), and
    /// its next `WAIT` covers only what it writes from now on.
    pub(super) fn client_reconnects(&mut self, index: usize) -> Result<(), String> {
        let (e, old) = (self.clients[index].engine, self.clients[index].conn);
        self.client_of.remove(&(e, old));
        let conn = self.driver(e).accept();
        self.client_of.insert((e, conn), index);
        self.note(format!("engine {e} closed client {index} (its private connection was lost); it reconnects"));
        let client = &mut self.clients[index];
        client.conn = conn;
        client.to_engine.clear();
        client.from_engine.clear();
        client.scanner = ReplyScanner::new(Limits::default());
        client.outstanding.clear();
        // `WAIT` counts the writes of its own connection only.
        client.unwaited.clear();
        client.readable = true;
        client.scan = None;
        client.may_be_pinned = false;
        client.private_lost = false;
        self.scan_traces[index].clear();
        self.drain(e)
    }

    /// A reply to the client's `SCAN` call: an error ends the iteration unchecked (the client would start
    /// again); keys are remembered, and a cursor of 0 ends the iteration, checked.
    fn scan_reply(&mut self, index: usize, reply: &[u8]) -> Result<(), String> {
        let Some(mut scan) = self.clients[index].scan.take() else {
            return Err(format!("client {index} got a SCAN reply with no iteration in progress"));
        };
        if reply.first() == Some(&b'-') {
            return Ok(());
        }
        let Some((cursor, keys)) = parse_scan_reply(reply) else {
            return Err(format!("client {index}: SCAN got {:?}", show(reply)));
        };
        let prefix = format!("c{index}:");
        if let Some(key) = keys.iter().find(|k| !k.starts_with(prefix.as_bytes())) {
            return Err(format!("client {index}: SCAN MATCH {prefix}* returned {key:?} (another request's reply?)"));
        }
        scan.seen.extend(keys);
        scan.in_flight = false;
        scan.cursor = cursor;
        if cursor != 0 {
            self.clients[index].scan = Some(scan);
            return Ok(());
        }
        self.outcome.scans_completed += 1;
        if !scan.removals.is_empty() {
            self.outcome.scans_across_removal += 1;
            self.outcome.scan_removals.extend(scan.removals.iter().copied());
        }
        if !scan.exempt {
            self.outcome.scans_checked += 1;
            self.check_scan_complete(index, &scan)?;
        }
        Ok(())
    }

    /// Invariant 10: the iteration that just ended returned every key of the client that the server process
    /// which served its last stretch (from where it last started at cursor 0: the client's start, or the
    /// engine's restart elsewhere) held at every call of that stretch.
    fn check_scan_complete(&self, index: usize, scan: &ScanIteration) -> Result<(), String> {
        let trace = &self.scan_traces[index];
        let Some(start) = trace.iter().rposition(|exec| exec.cursor == 0) else {
            return Err(format!("client {index}'s SCAN iteration ended, but no server started it"));
        };
        let process = trace[start].process;
        let mut held = trace[start].held.clone();
        for exec in &trace[start + 1..] {
            held.retain(|key| exec.held.contains(key));
        }
        let missing: Vec<&Bytes> = held.iter().filter(|key| !scan.seen.contains(*key)).collect();
        if !missing.is_empty() {
            return Err(format!(
                "client {index}'s SCAN iteration missed {missing:?}, held by server {} (incarnation {}) throughout",
                process.0, process.1
            ));
        }
        Ok(())
    }
}

/// The request for `op`, one of `SET`, `GET`, `WAIT` and `ECHO`.
fn request_of(op: &Op) -> Request {
    match op {
        Op::Set { key, value, .. } => Request::from_args(&[b"SET".as_slice(), key, value]),
        Op::Get { key, .. } => Request::from_args(&[b"GET".as_slice(), key]),
        Op::Wait { .. } => Request::from_args(&[b"WAIT".as_slice(), b"1", b"50"]),
        Op::Echo { tag } => Request::from_args(&[b"ECHO".as_slice(), tag]),
        Op::Scan | Op::Multi | Op::Queued | Op::Exec { .. } => unreachable!("built where they are chosen"),
    }
}

/// The cursor and the keys of a `SCAN` reply (`*2`, the cursor as a bulk string, an array of bulk strings).
pub(super) fn parse_scan_reply(reply: &[u8]) -> Option<(u64, Vec<Bytes>)> {
    let mut lines = reply.split(|&b| b == b'\n').map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    if lines.next()? != b"*2" {
        return None;
    }
    lines.next()?;
    let cursor = std::str::from_utf8(lines.next()?).ok()?.parse().ok()?;
    let count: usize = std::str::from_utf8(lines.next()?.strip_prefix(b"*")?).ok()?.parse().ok()?;
    let mut keys = Vec::with_capacity(count);
    for _ in 0..count {
        lines.next()?;
        keys.push(Bytes::copy_from_slice(lines.next()?));
    }
    Some((cursor, keys))
}

impl Sim<'_> {
    /// Invariant 8: a `WAIT` that reported `reported` replicas after the `SET`s of `keys`: every one of those writes
    /// that ran is held by at least `reported` servers besides one (the master that ran it, or whoever holds it in
    /// its place).
    fn check_wait(&self, index: usize, keys: &[Bytes], reported: usize) -> Result<(), String> {
        let writes = &self.cluster.writes;
        for key in keys {
            let Some(id) = writes.iter().position(|w| w.key == key) else { continue };
            let holders = self.cluster.servers.iter().filter(|s| s.holds(&writes[id], id as u64)).count();
            if reported > holders.saturating_sub(1) {
                return Err(format!(
                    "client {index}: WAIT reported {reported} replicas, but only {holders} server(s) hold {key:?}"
                ));
            }
        }
        Ok(())
    }
}

/// Whether `reply` is the engine's error for a request on a backend connection that was lost or never opened.
fn lost_connection(reply: &[u8]) -> bool {
    let text = String::from_utf8_lossy(reply);
    text.contains("redis-proxy lost the connection") || text.contains("redis-proxy could not reach")
}

fn show(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply).trim_end().to_string()
}
