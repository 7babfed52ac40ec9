//! A client's input: the requests split off its bytes, checked against its authentication and classified by its
//! session, the start of a request that may be uploaded as it arrives, and the answer to a protocol error.

use super::{Clients, HeldRequest};
use crate::auth::Verdict;
use crate::command::{self, CommandFlags};
use crate::conn::ConnId;
use crate::contract::Outbox;
use crate::cursor;
use crate::event::Event;
use crate::resp::{self, PendingLastArg, Request};
use crate::session::{self, Handling, Pin};
use crate::upload::{UPLOAD_HEAD_MAX, UPLOAD_MIN};
use bytes::{Buf, Bytes, BytesMut};
use std::time::Instant;

/// The next thing a client's input holds.
pub(crate) enum NextRequest {
    /// A classified request to run (or hold); `behind_held`: earlier requests of the client are held, so it must
    /// be held too (told here, where the client is at hand, to spare the caller a lookup).
    Request { held: HeldRequest, behind_held: bool },
    /// Nothing complete yet, or the client is gone or closing.
    None,
}

/// The start of a request that may be uploaded piece by piece (see [`crate::upload`]).
pub(crate) struct UploadHead {
    /// Everything before the value, classified as the request it starts.
    pub(crate) held: HeldRequest,
    /// How many bytes of the client's buffer that is.
    pub(crate) head_len: usize,
    /// How long the value is.
    pub(crate) body_len: usize,
}

impl Clients {
    /// Splits and classifies the next request off `buf`. A protocol error answers the client (after errors for
    /// what it has held), closes it and returns None.
    pub(crate) fn next_request(
        &mut self,
        now: Instant,
        conn: ConnId,
        buf: &mut BytesMut,
        out: &mut Outbox,
    ) -> NextRequest {
        loop {
            let Some(client) = self.conns.get_mut(conn).filter(|c| !c.closing) else {
                buf.clear();
                return NextRequest::None;
            };
            let request = match client.scanner.next_request(buf) {
                Ok(Some(request)) => request,
                Ok(None) => return NextRequest::None,
                Err(error) => {
                    buf.clear();
                    self.protocol_error(conn, format!("ERR {error}"), out);
                    return NextRequest::None;
                }
            };
            if request.is_empty() {
                continue;
            }
            let pinned = client.private.is_some() || client.session.current_pin() != Pin::Shared;
            let mut request = request;
            let spec = command::resolve(request.arg(0).unwrap_or_default(), request.arg(1));
            if client.auth.restricted() || spec.is_some_and(|s| s.flags.contains(command::CommandFlags::NO_AUTH)) {
                match client.auth.check(&self.config.users, &request, spec) {
                    Verdict::Pass => {}
                    Verdict::Rewritten(rewritten) => request = rewritten,
                    Verdict::Handle(handling) => {
                        // Redis fails EXEC of a transaction in which it refused a command while queuing.
                        if matches!(handling, Handling::Refuse(_)) {
                            client.session.multi_refused |= client.session.in_multi;
                        }
                        let (resp3, behind_held) = (client.session.resp3, !client.held.is_empty());
                        let held = HeldRequest { request, spec, handling, since: now, resp3 };
                        return NextRequest::Request { held, behind_held };
                    }
                }
            }
            let handling = client.session.classify(&request, spec, pinned, self.config.allow_topology_commands);
            let (resp3, behind_held) = (client.session.resp3, !client.held.is_empty());
            let held = HeldRequest { request, spec, handling, since: now, resp3 };
            return NextRequest::Request { held, behind_held };
        }
    }

    /// The start of `conn`'s request in `buf` when it may be uploaded: its last argument is a large value still
    /// arriving, everything before it is here, and the client's state lets it go on a private connection now (a
    /// plain command, authenticated, nothing held and no order barrier). None otherwise: it is held whole.
    #[cold]
    #[inline(never)]
    pub(crate) fn upload_head(&self, now: Instant, conn: ConnId, buf: &BytesMut) -> Option<UploadHead> {
        let client = self.conns.get(conn)?;
        let PendingLastArg { head_len, body_len, args } = client.scanner.pending_last_arg()?;
        let ready = !client.closing
            && client.held.is_empty()
            && !client.passthrough
            && !client.auth.restricted()
            && (client.private.is_some() || client.in_flight() == 0);
        if body_len < UPLOAD_MIN || head_len > UPLOAD_HEAD_MAX || args.len() < 2 || !ready {
            return None;
        }
        let request = Request::from_head(Bytes::copy_from_slice(&buf[..head_len]), args);
        let spec = command::resolve(request.arg(0)?, request.arg(1))?;
        let special = CommandFlags::BLOCKING | CommandFlags::NO_AUTH;
        // A `SCAN` whose cursor the proxy cannot place is answered with an error instead of being sent: an upload
        // must go out once started.
        if session::may_be_special(spec.name) || spec.flags.intersects(special) || cursor::scan_call(&request).is_some()
        {
            return None;
        }
        let handling = Handling::Forward(client.session.current_pin().max(Pin::Transient));
        let held = HeldRequest { request, spec: Some(spec), handling, since: now, resp3: client.session.resp3 };
        Some(UploadHead { held, head_len, body_len })
    }

    /// The head of `conn`'s request went on as an upload: it leaves `buf`, and the scanner starts afresh after
    /// the value.
    pub(crate) fn upload_started(&mut self, conn: ConnId, buf: &mut BytesMut, head_len: usize) {
        if let Some(client) = self.conns.get_mut(conn) {
            buf.advance(head_len);
            client.scanner.restart();
        }
    }

    fn protocol_error(&mut self, conn: ConnId, message: String, out: &mut Outbox) {
        out.event(Event::ClientProtocolError { conn, message: message.clone() });
        // Requests held so far were never sent, and the client is about to be closed: each gets an error now, so
        // that the protocol error stays the last reply, in the order of the stream.
        let dropped = self.take_held(conn);
        for _ in 0..dropped {
            self.reply_local(
                conn,
                resp::error_reply("ERR redis-proxy did not send this command: a protocol error followed it"),
                out,
            );
        }
        self.reply_local(conn, resp::error_reply(&message), out);
        self.close_after_replies(conn, out);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{accept, actions, clients, error, get};
    use super::*;
    use crate::contract::Action;
    use crate::session::Pin;

    fn next(clients: &mut Clients, conn: ConnId, buf: &mut BytesMut, out: &mut Outbox) -> Option<HeldRequest> {
        match clients.next_request(Instant::now(), conn, buf, out) {
            NextRequest::Request { held, .. } => Some(held),
            NextRequest::None => None,
        }
    }

    #[test]
    fn pipelined_requests_are_split_off_one_by_one() {
        let mut clients = clients("");
        let (conn, mut out) = accept(&mut clients);
        let mut buf =
            BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n*2\r\n$3\r\nGET\r\n$1\r\nb\r\n*2\r\n$3\r\nGE"[..]);
        let a = next(&mut clients, conn, &mut buf, &mut out).expect("complete");
        assert_eq!((a.request.arg(1), a.spec.map(|s| s.name)), (Some(&b"a"[..]), Some("get")));
        assert_eq!(a.handling, Handling::Forward(Pin::Shared));
        let b = next(&mut clients, conn, &mut buf, &mut out).expect("complete");
        assert_eq!(b.request.arg(1), Some(&b"b"[..]));
        assert!(next(&mut clients, conn, &mut buf, &mut out).is_none(), "the third is not all here");
        assert_eq!(&buf[..], b"*2\r\n$3\r\nGE", "it stays for the next read");
        buf.extend_from_slice(b"T\r\n$1\r\nc\r\n");
        let c = next(&mut clients, conn, &mut buf, &mut out).expect("complete now");
        assert_eq!(c.request.arg(1), Some(&b"c"[..]));
        assert!(buf.is_empty());
        assert!(actions(&mut out).is_empty());
    }

    #[test]
    fn a_protocol_error_answers_the_held_requests_first_and_closes() {
        let mut clients = clients("");
        let (conn, mut out) = accept(&mut clients);
        let held = get(&mut clients, Instant::now(), conn, "k");
        clients.hold(conn, held, false, &mut out);
        let mut buf = BytesMut::from(&b"*x\r\n"[..]);
        assert!(next(&mut clients, conn, &mut buf, &mut out).is_none());
        assert!(buf.is_empty());
        let actions = actions(&mut out);
        assert_eq!(actions.len(), 3);
        assert_eq!(actions[0], error(conn, "ERR redis-proxy did not send this command: a protocol error followed it"));
        assert!(
            matches!(&actions[1], Action::Send { data, .. } if data.starts_with(b"-ERR Protocol error")),
            "{actions:?}"
        );
        assert_eq!(actions[2], Action::Close { conn });
        assert!(!clients.contains(conn) && !clients.any_held());
        assert!(out.events.iter().any(|e| matches!(e, Event::ClientProtocolError { .. })));
    }

    #[test]
    fn a_closing_client_is_read_no_more() {
        let mut clients = clients("");
        let (conn, mut out) = accept(&mut clients);
        clients.reserve_slot(conn);
        clients.close_after_replies(conn, &mut out);
        assert!(clients.contains(conn), "a reply is still owed");
        let mut buf = BytesMut::from(&b"*1\r\n$4\r\nPING\r\n"[..]);
        assert!(next(&mut clients, conn, &mut buf, &mut out).is_none());
        assert!(buf.is_empty(), "what it sent after QUIT is dropped");
    }

    #[test]
    fn a_large_value_still_arriving_may_be_uploaded_when_nothing_waits_before_it() {
        let mut clients = clients("");
        let (conn, mut out) = accept(&mut clients);
        let head = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${UPLOAD_MIN}\r\n");
        let mut buf = BytesMut::from(format!("{head}xyz").as_bytes());
        assert!(next(&mut clients, conn, &mut buf, &mut out).is_none(), "the value is not all here");
        let since = Instant::now();
        let upload = clients.upload_head(since, conn, &buf).expect("an upload");
        assert_eq!((upload.head_len, upload.body_len), (head.len(), UPLOAD_MIN));
        assert_eq!(upload.held.spec.map(|s| s.name), Some("set"));
        assert_eq!(upload.held.handling, Handling::Forward(Pin::Transient), "on a private connection");
        // Behind a held request it is held whole instead, to keep the order.
        let handling = Handling::Forward(Pin::Shared);
        let held =
            HeldRequest { request: Request::from_args(&["GET", "a"]), spec: None, handling, since, resp3: false };
        clients.hold(conn, held, false, &mut out);
        assert!(clients.upload_head(Instant::now(), conn, &buf).is_none());
        assert!(clients.pop_held(conn).is_some());
        clients.upload_started(conn, &mut buf, upload.head_len);
        assert_eq!(&buf[..], b"xyz", "the value follows outside the scanner");
    }
}
