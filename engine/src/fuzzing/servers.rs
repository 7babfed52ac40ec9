//! How the fuzzed servers answer: the probe's commands as the test kit's [`FakeServer`] does, with facts and
//! faults varied by a flavour byte, and every other command with one of a few kinds of reply.

use crate::resp::Request;
use crate::testkit::FakeServer;

/// Appends to `out` what `server` answers to `request`; `flavor` varies it.
pub(super) fn answer(server: &mut FakeServer, request: &Request, flavor: u8, out: &mut Vec<u8>) {
    let name = request.arg(0).unwrap_or_default().to_ascii_uppercase();
    match (name.as_slice(), flavor % 8) {
        (b"PING", 7) => {
            out.extend_from_slice(b"-LOADING loading\r\n");
            return;
        }
        (b"INFO", _) => {
            // Offsets grow, links drop and priorities change, so the failover rules meet every kind of fact.
            server.info.offset += i64::from(flavor);
            if let Some(link) = &mut server.info.replica_of {
                link.link_up = flavor % 5 != 0;
                link.priority = if flavor % 7 == 0 { 0 } else { 100 };
            }
        }
        _ => {}
    }
    let args: Vec<&[u8]> = request.args().collect();
    if let Some(reply) = server.answer(&args) {
        out.extend_from_slice(&reply);
        return;
    }
    match (name.as_slice(), flavor % 8) {
        (b"SUBSCRIBE" | b"PSUBSCRIBE" | b"UNSUBSCRIBE", _) => {
            let kind = String::from_utf8_lossy(&name).to_ascii_lowercase();
            for (n, channel) in request.args().skip(1).enumerate() {
                let channel = String::from_utf8_lossy(channel);
                out.extend_from_slice(
                    format!("*3\r\n${}\r\n{kind}\r\n${}\r\n{channel}\r\n:{}\r\n", kind.len(), channel.len(), n + 1)
                        .as_bytes(),
                );
            }
        }
        (b"EXEC", _) => out.extend_from_slice(b"*2\r\n+OK\r\n:1\r\n"),
        (b"ECHO", _) => {
            let arg = request.arg(1).unwrap_or_default();
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        (b"SCAN", _) => {
            // A cursor of the server's own, or the end of the iteration.
            let cursor = if flavor % 4 == 0 { 0 } else { u32::from(flavor) * 7 + server.info.offset as u32 % 97 };
            let cursor = cursor.to_string();
            out.extend_from_slice(format!("*2\r\n${}\r\n{cursor}\r\n*1\r\n$1\r\nk\r\n", cursor.len()).as_bytes());
        }
        (_, 0) => out.extend_from_slice(b"$-1\r\n"),
        (_, 1) => out.extend_from_slice(b"-ERR fuzz\r\n"),
        (_, 2) => out.extend_from_slice(b":42\r\n"),
        (_, 3) => out.extend_from_slice(b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nx\r\n"),
        (_, 4) => out.extend_from_slice(b"*2\r\n%1\r\n+a\r\n~1\r\n,1.5\r\n$3\r\nabc\r\n"),
        _ => out.extend_from_slice(b"+OK\r\n"),
    }
}
