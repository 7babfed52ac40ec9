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
    /// A classified request to run (or hold).
    Request(HeldRequest),
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
                        let resp3 = client.session.resp3;
                        return NextRequest::Request(HeldRequest { request, spec, handling, since: now, resp3 });
                    }
                }
            }
            let handling = client.session.classify(&request, spec, pinned, self.config.allow_topology_commands);
            let resp3 = client.session.resp3;
            return NextRequest::Request(HeldRequest { request, spec, handling, since: now, resp3 });
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
