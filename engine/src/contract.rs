//! The sans-IO surface: what a runtime hands the engine ([`Input`]), what it must do ([`Action`]), why the engine
//! wants the clock ([`TimerReason`]), and the queue the engine's machines fill ([`Outbox`]).

use crate::address::ServerAddress;
use crate::conn::{ConnId, Lane};
use crate::event::Event;
use crate::failure::ConnectFailure;
use crate::status::Counters;
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;

/// What the runtime must do; drained with [`crate::Engine::poll_action`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Queue `data` for writing on `conn` (also while it is still connecting: write once connected).
    Send {
        /// The connection.
        conn: ConnId,
        /// The bytes.
        data: Bytes,
    },
    /// Open a TCP connection to `address` and report [`Input::Connected`] or [`Input::ConnectFailed`] for `conn`.
    Connect {
        /// The id the new connection carries.
        conn: ConnId,
        /// Where to connect.
        address: ServerAddress,
    },
    /// Close `conn` once every byte queued for it has been written (as Redis does after `QUIT`); read nothing
    /// more from it and report nothing more about it.
    Close {
        /// The connection.
        conn: ConnId,
    },
    /// Stop (`false`) or resume (`true`) reading from `conn`; on resume, read what the socket already holds.
    SetReadable {
        /// The connection.
        conn: ConnId,
        /// Whether to read.
        readable: bool,
    },
}

/// Something that happened on a connection, handed to [`crate::Engine::handle_input`].
#[derive(Debug)]
pub enum Input<'a> {
    /// Bytes arrived on `conn`; the engine splits complete frames off `buf` and leaves a partial one in it.
    /// Keep `buf` per connection and append the next read to it.
    Data {
        /// The connection.
        conn: ConnId,
        /// The connection's read buffer.
        buf: &'a mut BytesMut,
    },
    /// A connection asked for with [`Action::Connect`] is established.
    Connected {
        /// The connection.
        conn: ConnId,
    },
    /// A connection asked for with [`Action::Connect`] could not be established (the TCP connect, or the TLS
    /// handshake a runtime does before it reports [`Input::Connected`]).
    ConnectFailed {
        /// The connection.
        conn: ConnId,
        /// Why, in plain words, for the log.
        reason: &'a str,
        /// Why, as a kind: what the server's status and a held request's error say.
        failure: ConnectFailure,
    },
    /// A connection asked for with [`Action::Connect`] was refused (`ECONNREFUSED`): nothing listens there, so
    /// the server's process is gone. Report other connect failures as [`Input::ConnectFailed`].
    Refused {
        /// The connection.
        conn: ConnId,
    },
    /// The peer closed `conn`, or it failed; the runtime has closed it.
    Closed {
        /// The connection.
        conn: ConnId,
    },
    /// Writing to `conn` would block: its peer is not reading as fast as the engine sends.
    WriteBlocked {
        /// The connection.
        conn: ConnId,
    },
    /// Everything queued for `conn` after a [`Input::WriteBlocked`] has been written.
    Drained {
        /// The connection.
        conn: ConnId,
    },
}

/// Why the engine wants [`crate::Engine::handle_timeout`] at the instant [`crate::Engine::poll_timeout`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerReason {
    /// Time to probe the servers.
    Probe,
    /// The server at this position of `servers` will count as down (or be sent `SCRIPT KILL`) unless it answers
    /// first.
    DownCheck(usize),
    /// A `WAIT` polls the replicas' offsets, or times out.
    Wait,
    /// Clients' reads wait on the master until their writes reach a replica: the offsets are polled.
    ReadFence,
    /// A promotion must be confirmed by then.
    FailoverDeadline,
    /// The oldest held request expires.
    HoldExpiry,
    /// The shutdown grace ends: clients still connected are closed.
    ShutdownGrace,
    /// A planned switchover asks the master and its target for their replication offsets again.
    Switchover,
    /// A large reply streamed to a client that stopped reading has kept its backend connection unread long
    /// enough: the rest is read anyway, so that the replies behind it on that connection get through.
    StreamStall,
    /// Sentinel mode: the sentinels are asked again, or the proxy has been without their majority too long.
    Sentinel,
    /// Cluster mode: the slot map is read again, or a redirected request is sent again.
    Cluster,
}

/// The actions and events the machines produce, in order, until the runtime drains them, and the counters of
/// what passed through (every machine already reports here, so counting here needs no extra plumbing).
#[derive(Default)]
pub(crate) struct Outbox {
    pub(crate) actions: VecDeque<Action>,
    pub(crate) events: VecDeque<Event>,
    pub(crate) counters: Counters,
}

impl Outbox {
    /// Queues `data` for `conn`.
    pub(crate) fn send(&mut self, conn: ConnId, data: Bytes) {
        if conn.lane() == Lane::Client {
            self.counters.bytes_out += data.len() as u64;
        }
        self.actions.push_back(Action::Send { conn, data });
    }

    /// Asks the runtime to close `conn` after flushing it.
    pub(crate) fn close(&mut self, conn: ConnId) {
        self.actions.push_back(Action::Close { conn });
    }

    /// Reports `event`.
    pub(crate) fn event(&mut self, event: Event) {
        self.counters.count_event(&event);
        self.events.push_back(event);
    }
}
