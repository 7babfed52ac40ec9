//! The simulated clients: each writes unique keys, reads back what it wrote, now and then asks `WAIT 1 50`, and
//! checks every reply. A `WAIT` must never report more replicas than hold every write the client sent since its
//! previous `WAIT` (invariant 8).

use super::Sim;
use crate::resp::{Limits, ReplyScanner};
use crate::ConnId;
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;

/// Most requests a simulated client has in flight before it waits.
const MAX_OUTSTANDING: usize = 8;

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
}

impl Client {
    /// A client of engine `engine` on `conn` that sends its first request at `first_at` ms.
    pub(super) fn new(engine: usize, conn: ConnId, first_at: u64) -> Client {
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
        }
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
        let n = client.sent;
        client.sent += 1;
        self.outcome.requests += 1;
        let last = self.clock.ms() >= self.converge_at;
        let op = if n % 5 == 4 && !client.unwaited.is_empty() && !last {
            Op::Wait { keys: std::mem::take(&mut client.unwaited) }
        } else if n % 3 == 2 && !client.acked.is_empty() && !last {
            let (key, value) = client.acked[(n as usize * 7) % client.acked.len()].clone();
            Op::Get { key, value }
        } else {
            let key = Bytes::from(format!("c{index}:{n}"));
            let value = Bytes::from(format!("v{index}:{n}"));
            client.unwaited.push(key.clone());
            Op::Set { key, value, last }
        };
        let request = match &op {
            Op::Set { key, value, .. } => crate::resp::Request::from_args(&[b"SET".as_slice(), key, value]),
            Op::Get { key, .. } => crate::resp::Request::from_args(&[b"GET".as_slice(), key]),
            Op::Wait { .. } => crate::resp::Request::from_args(&[b"WAIT".as_slice(), b"1", b"50"]),
        };
        client.outstanding.push_back(op);
        client.to_engine.extend_from_slice(request.frame());
        self.feed_client(index)
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
            }
        }
    }
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

fn show(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply).trim_end().to_string()
}
