//! Backend connections: what each one is for, and the FIFO that matches its replies to their requests.

use crate::conn::ConnId;
use crate::resp::{Limits, ReplyScanner};
use crate::topology::ServerId;
use std::collections::VecDeque;

/// What a backend connection is used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Shared and pipelined: many clients' stateless requests; `slot` is its place in the server's pool.
    Shared {
        /// Index in the server's shared pool.
        slot: usize,
    },
    /// Private to one client while its session carries state; `owner` None while being cleaned or idle.
    Private {
        /// The client it serves.
        owner: Option<ConnId>,
    },
    /// The monitor's probe connection (PING, INFO, REPLICAOF).
    Probe,
}

/// A probe request awaiting its reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// `PING`
    Ping,
    /// `INFO`
    Info,
    /// `REPLICAOF ...`
    ReplicaOf,
}

/// Who gets the next reply on a backend connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waiter {
    /// Reply slot `seq` of client `conn` (a stale id finds no client and the reply is dropped).
    Client {
        /// The client.
        conn: ConnId,
        /// Its reply slot.
        seq: u64,
    },
    /// The `RESET` that cleans a released private connection.
    Reset,
    /// A probe.
    Probe(Probe),
}

/// One connection to a server.
#[derive(Debug)]
pub struct Backend {
    /// The server it goes to.
    pub server: ServerId,
    /// What it is for.
    pub purpose: Purpose,
    /// Whether the runtime reported it connected.
    pub connected: bool,
    /// Splits replies off its read buffer.
    pub scanner: ReplyScanner,
    /// Replies expected, in order.
    pub waiters: VecDeque<Waiter>,
}

impl Backend {
    /// A connection being opened to `server`.
    pub fn new(server: ServerId, purpose: Purpose, limits: Limits) -> Backend {
        Backend { server, purpose, connected: false, scanner: ReplyScanner::new(limits), waiters: VecDeque::new() }
    }
}
