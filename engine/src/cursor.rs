//! Cursor affinity for the `SCAN` family (`SCAN`, `HSCAN`, `SSCAN`, `ZSCAN`).
//!
//! A cursor is a position in one Redis process's hash table, and every process seeds its tables differently: a
//! cursor continued on another server skips or repeats entries without any error. So the proxy remembers, per
//! client, which server returned each cursor, and sends the call that continues it to that server (`route`
//! decides what happens when that server no longer serves reads). Only replies to `SCAN`-family requests are
//! looked at, and only their first element (the cursor).

use crate::resp::Request;
use crate::server_id::ServerId;
use std::collections::VecDeque;

/// Cursors remembered per client: one per iteration in progress is typical; the oldest is forgotten past this.
const MAX_REMEMBERED: usize = 16;

/// A `SCAN`-family request: which iteration it belongs to and where in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ScanCall {
    /// The command and key (an `HSCAN` of `h1` is another iteration than one of `h2`, or a `SCAN`).
    iteration: u64,
    /// The cursor it continues; 0 starts an iteration.
    cursor: u64,
}

impl ScanCall {
    /// Whether it starts an iteration (any server may answer it).
    pub(crate) fn starts(&self) -> bool {
        self.cursor == 0
    }

    /// `request`, this call, with its cursor replaced by 0: the same iteration started again.
    pub(crate) fn restarted(&self, request: &Request) -> Request {
        // `SCAN cursor`, or `HSCAN key cursor` (and `SSCAN`, `ZSCAN`).
        let cursor_at = if request.arg(0).is_some_and(|name| name.len() == 4) { 1 } else { 2 };
        let args: Vec<&[u8]> =
            request.args().enumerate().map(|(at, arg)| if at == cursor_at { &b"0"[..] } else { arg }).collect();
        Request::from_args(&args)
    }
}

/// The `SCAN`-family call `request` makes, if it is one and its cursor is a number (Redis answers any other with
/// an error of its own, wherever it goes).
pub(crate) fn scan_call(request: &Request) -> Option<ScanCall> {
    let name = request.arg(0)?;
    // Most requests are not a SCAN: their length settles it before any byte is compared.
    let (kind, cursor_at) = match name.len() {
        4 if name.eq_ignore_ascii_case(b"scan") => (0u8, 1),
        5 if name[1..].eq_ignore_ascii_case(b"scan") => match name[0].to_ascii_lowercase() {
            b'h' => (1, 2),
            b's' => (2, 2),
            b'z' => (3, 2),
            _ => return None,
        },
        _ => return None,
    };
    let cursor = parse_u64(request.arg(cursor_at)?)?;
    let key = if cursor_at == 2 { request.arg(1)? } else { b"" };
    Some(ScanCall { iteration: fingerprint(kind, key), cursor })
}

/// FNV-1a of the command kind and the key: two iterations of one client that collide only share cursors that are
/// also equal, which [`Cursors::issued`] then reports as unknown rather than guess.
fn fingerprint(kind: u8, key: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64 ^ u64::from(kind);
    for &byte in key {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The cursor of a `SCAN`-family reply (`*2`, then the cursor as a bulk string, then the elements).
fn reply_cursor(reply: &[u8]) -> Option<u64> {
    let rest = reply.strip_prefix(b"*2\r\n$")?;
    let header_end = memchr::memchr(b'\r', rest)?;
    let len: usize = std::str::from_utf8(&rest[..header_end]).ok()?.parse().ok()?;
    let start = header_end + 2;
    parse_u64(rest.get(start..start.checked_add(len)?)?)
}

/// One process behind a server's address: a cursor is a position in that process's tables, so a restart (the same
/// server, a new incarnation) makes it meaningless there too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Process {
    /// The server.
    pub(crate) server: ServerId,
    /// Its incarnation when the cursor was asked for (see `ServerView::incarnation`).
    pub(crate) incarnation: u64,
}

/// Where the cursor of a `SCAN`-family call came from, as far as this client's connection knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Issuer {
    /// Cursor 0: a new iteration, any server.
    Anyone,
    /// This process returned it to this client (the latest to, when several did).
    Server(Process),
    /// Not returned on this connection (another connection, or a cursor forgotten).
    Unknown,
}

/// One cursor returned to the client.
struct Issued {
    iteration: u64,
    cursor: u64,
    process: Process,
}

/// One client's cursors: those returned to it, and its `SCAN`-family requests in flight.
#[derive(Default)]
pub(crate) struct Cursors {
    /// Newest last; at most [`MAX_REMEMBERED`].
    issued: VecDeque<Issued>,
    /// (reply slot, iteration, process) of each `SCAN`-family request awaiting its reply.
    in_flight: Vec<(u64, u64, Process)>,
}

impl Cursors {
    /// Who issued the cursor `call` continues.
    pub(crate) fn issuer(&self, call: &ScanCall) -> Issuer {
        if call.starts() {
            return Issuer::Anyone;
        }
        let found = self.issued.iter().rev().find(|i| i.iteration == call.iteration && i.cursor == call.cursor);
        match found {
            Some(issued) => Issuer::Server(issued.process),
            None => Issuer::Unknown,
        }
    }

    /// `call` went out to `process`, its reply awaited in slot `seq`.
    pub(crate) fn sent(&mut self, seq: u64, call: &ScanCall, process: Process) {
        self.in_flight.push((seq, call.iteration, process));
    }

    /// The reply for slot `seq` arrived: if a `SCAN`-family request awaited it, remember the cursor it returns.
    pub(crate) fn reply(&mut self, seq: u64, reply: &[u8]) {
        let Some(at) = self.in_flight.iter().position(|(s, _, _)| *s == seq) else { return };
        let (_, iteration, process) = self.in_flight.swap_remove(at);
        // 0 ends the iteration; an error reply carries no cursor.
        let Some(cursor) = reply_cursor(reply).filter(|c| *c != 0) else { return };
        // Cursors are bucket positions, so two servers (or two iterations in a row) can return the same one: the
        // latest wins, since a client continues an iteration with the cursor it was just given. (Two iterations of
        // the same key interleaved on one connection that meet at the same cursor would confuse it; a client that
        // does that can keep them on separate connections.)
        self.issued.retain(|i| i.iteration != iteration || i.cursor != cursor);
        if self.issued.len() == MAX_REMEMBERED {
            self.issued.pop_front();
        }
        self.issued.push_back(Issued { iteration, cursor, process });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(slot: usize) -> Process {
        Process { server: ServerId::first(slot), incarnation: 0 }
    }

    fn call(args: &[&str]) -> Option<ScanCall> {
        scan_call(&Request::from_args(args))
    }

    fn reply(cursor: &str) -> Vec<u8> {
        format!("*2\r\n${}\r\n{cursor}\r\n*1\r\n$1\r\nk\r\n", cursor.len()).into_bytes()
    }

    #[test]
    fn recognises_the_scan_family_and_its_cursor() {
        assert_eq!(call(&["scan", "17", "COUNT", "10"]).map(|c| c.cursor), Some(17));
        assert_eq!(call(&["HSCAN", "h", "5"]).map(|c| c.cursor), Some(5));
        assert!(call(&["zScan", "z", "0"]).is_some_and(|c| c.starts()));
        assert_eq!(call(&["sscan", "s"]), None, "no cursor: Redis answers the arity error");
        assert_eq!(call(&["SCAN", "x"]), None, "not a number: Redis answers invalid cursor");
        assert_eq!(call(&["GET", "k"]), None);
        assert_eq!(call(&["xscan", "k", "1"]), None);
        assert_ne!(call(&["HSCAN", "a", "1"]), call(&["HSCAN", "b", "1"]), "other key, other iteration");
        assert_ne!(call(&["HSCAN", "a", "1"]), call(&["SSCAN", "a", "1"]));
    }

    #[test]
    fn a_restarted_call_is_the_same_iteration_from_0() {
        let request = Request::from_args(&["HSCAN", "h", "96", "MATCH", "a*", "COUNT", "10"]);
        let call = scan_call(&request).unwrap();
        let restarted = call.restarted(&request);
        let args: Vec<&[u8]> = restarted.args().collect();
        assert_eq!(args, [&b"HSCAN"[..], b"h", b"0", b"MATCH", b"a*", b"COUNT", b"10"]);
        let again = scan_call(&restarted).unwrap();
        assert!(again.starts() && again.iteration == call.iteration);
        let scan = Request::from_args(&["scan", "12"]);
        assert_eq!(scan_call(&scan).unwrap().restarted(&scan).frame().as_ref(), b"*2\r\n$4\r\nscan\r\n$1\r\n0\r\n");
    }

    #[test]
    fn parses_reply_cursors() {
        assert_eq!(reply_cursor(&reply("1234")), Some(1234));
        assert_eq!(reply_cursor(b"*2\r\n$1\r\n0\r\n*0\r\n"), Some(0));
        assert_eq!(reply_cursor(b"-ERR invalid cursor\r\n"), None);
        assert_eq!(reply_cursor(b"*2\r\n$9\r\n12\r\n"), None, "a short frame is not trusted");
    }

    #[test]
    fn remembers_which_server_returned_a_cursor() {
        let mut cursors = Cursors::default();
        let start = call(&["SCAN", "0"]).unwrap();
        assert_eq!(cursors.issuer(&start), Issuer::Anyone);
        cursors.sent(3, &start, process(2));
        cursors.reply(3, &reply("96"));
        let next = call(&["SCAN", "96", "COUNT", "10"]).unwrap();
        assert_eq!(cursors.issuer(&next), Issuer::Server(process(2)));
        assert_eq!(cursors.issuer(&call(&["HSCAN", "h", "96"]).unwrap()), Issuer::Unknown, "another iteration");
        assert_eq!(cursors.issuer(&call(&["SCAN", "97"]).unwrap()), Issuer::Unknown);
        // The same cursor from another server for the same iteration: the latest is the one continued.
        cursors.sent(4, &start, process(1));
        cursors.reply(4, &reply("96"));
        assert_eq!(cursors.issuer(&next), Issuer::Server(process(1)));
        // Replies to other slots, errors and the final 0 leave no cursor.
        cursors.sent(5, &start, process(1));
        cursors.reply(6, &reply("5"));
        cursors.reply(5, b"-ERR no\r\n");
        assert!(cursors.in_flight.is_empty());
        assert_eq!(cursors.issuer(&call(&["SCAN", "5"]).unwrap()), Issuer::Unknown);
    }

    #[test]
    fn forgets_the_oldest_past_the_bound() {
        let mut cursors = Cursors::default();
        let start = call(&["SCAN", "0"]).unwrap();
        for n in 1..=MAX_REMEMBERED as u64 + 1 {
            cursors.sent(n, &start, process(1));
            cursors.reply(n, &reply(&n.to_string()));
        }
        assert_eq!(cursors.issuer(&call(&["SCAN", "1"]).unwrap()), Issuer::Unknown);
        assert_eq!(cursors.issuer(&call(&["SCAN", "2"]).unwrap()), Issuer::Server(process(1)));
    }
}
