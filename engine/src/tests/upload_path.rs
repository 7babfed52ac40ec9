//! Large requests uploaded through the whole engine, on the test kit: byte-exact in any split, on a private
//! connection given back after the reply, the value's CRLF checked before it goes, backpressure from a server
//! that does not read, a client or a connection that goes away mid-upload, and the order behind a request in
//! flight.

use crate::testkit::{config, connects, readable, sent_on, Driver};
use crate::upload::UPLOAD_MIN;
use crate::{Action, ConnId, Input};
use proptest::prelude::*;

const GET_A: &[u8] = b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n";
const RESET: &[u8] = b"*1\r\n$5\r\nRESET\r\n";

/// `SET k <value>` with a value of `len` bytes whose every byte depends on its position (and `seed`), ended by
/// `terminator`.
fn set_request(len: usize, seed: u8, terminator: &[u8]) -> Vec<u8> {
    let mut request = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${len}\r\n").into_bytes();
    request.extend((0..len).map(|i| (i % 251) as u8 ^ seed));
    request.extend_from_slice(terminator);
    request
}

fn kit_with_client() -> (Driver, ConnId) {
    let mut kit = Driver::with_master(crate::Config { pool_size: 1, ..config(1) });
    let client = kit.accept();
    kit.drain();
    (kit, client)
}

/// Feeds `request` to `client` in pieces of `piece` bytes; returns every action.
fn feed_in_pieces(kit: &mut Driver, client: ConnId, request: &[u8], piece: usize) -> Vec<Action> {
    let mut actions = Vec::new();
    for chunk in request.chunks(piece) {
        kit.feed(client, chunk);
        actions.extend(kit.drain());
    }
    actions
}

/// `client` has sent half of a `SET` of a 2 x [`UPLOAD_MIN`] value (made from `seed`), uploading on a private
/// connection that is connected; returns the whole request and that connection.
fn half_uploaded(kit: &mut Driver, client: ConnId, seed: u8) -> (Vec<u8>, ConnId) {
    let request = set_request(2 * UPLOAD_MIN, seed, b"\r\n");
    let actions = feed_in_pieces(kit, client, &request[..UPLOAD_MIN], 256 * 1024);
    let [(private, _)] = connects(&actions)[..] else { panic!("one private connection") };
    kit.connected(private);
    (request, private)
}

fn closes(actions: &[Action], conn: ConnId) -> bool {
    actions.iter().any(|a| matches!(a, Action::Close { conn: to } if *to == conn))
}

#[test]
fn a_large_value_goes_on_as_it_arrives_on_a_private_connection_given_back_after_the_reply() {
    let (mut kit, client) = kit_with_client();
    let request = set_request(3 * UPLOAD_MIN, 1, b"\r\n");
    let piece = 100 * 1024;
    let mut sent = Vec::new();
    let mut private = None;
    for (n, chunk) in request.chunks(piece).enumerate() {
        kit.feed(client, chunk);
        let actions = kit.drain();
        if n == 0 {
            // The value's header says it is large: the head and what came of the value go on at once.
            let [(conn, _)] = connects(&actions)[..] else { panic!("one private connection") };
            private = Some(conn);
        }
        let private = private.unwrap();
        sent.extend(sent_on(&actions, private));
        let fed = (n + 1) * piece;
        if fed < request.len() {
            // Everything fed so far has gone on, but for the CRLF, held until it is whole and checked.
            assert_eq!(sent.len(), fed.min(request.len() - 2), "piece {n}");
        }
    }
    assert!(sent == request, "byte-exact");
    let private = private.unwrap();
    kit.connected(private);
    kit.feed(private, b"+OK\r\n");
    let actions = kit.drain();
    assert_eq!(sent_on(&actions, client), b"+OK\r\n");
    assert_eq!(sent_on(&actions, private), RESET, "given back, cleaned, once the reply is in");

    // The next request takes the shared connection again.
    kit.feed(private, b"+RESET\r\n");
    kit.drain();
    kit.feed(client, GET_A);
    let actions = kit.drain();
    let [(shared, _)] = connects(&actions)[..] else { panic!("the shared connection: {actions:?}") };
    assert_eq!(sent_on(&actions, shared), GET_A);
}

#[test]
fn values_below_the_bound_or_already_whole_take_the_shared_connection() {
    let (mut kit, client) = kit_with_client();
    let small = set_request(UPLOAD_MIN - 1, 2, b"\r\n");
    let whole = set_request(2 * UPLOAD_MIN, 3, b"\r\n");
    let mut actions = feed_in_pieces(&mut kit, client, &small, 64 * 1024);
    actions.extend(feed_in_pieces(&mut kit, client, &whole, whole.len()));
    let [(shared, _)] = connects(&actions)[..] else { panic!("one shared connection") };
    assert!(sent_on(&actions, shared) == [small, whole].concat());
}

#[test]
fn a_value_not_ended_by_crlf_never_runs_and_closes_the_client_with_the_protocol_error() {
    let (mut kit, client) = kit_with_client();
    let request = set_request(2 * UPLOAD_MIN, 4, b"XY");
    let actions = feed_in_pieces(&mut kit, client, &request, 256 * 1024);
    let [(private, _)] = connects(&actions)[..] else { panic!("one private connection") };
    let sent = sent_on(&actions, private);
    assert!(request[..request.len() - 2].starts_with(&sent), "only value bytes went, never the request's end");
    assert!(closes(&actions, private), "its connection is closed, and the request with it");
    assert_eq!(sent_on(&actions, client), b"-ERR Protocol error: bulk string not terminated by CRLF\r\n");
    assert!(closes(&actions, client));
}

#[test]
fn a_server_connection_blocked_on_writing_pauses_the_uploading_client() {
    let (mut kit, client) = kit_with_client();
    let request = set_request(2 * UPLOAD_MIN, 5, b"\r\n");
    let half = request.len() / 2;
    let actions = feed_in_pieces(&mut kit, client, &request[..half], 256 * 1024);
    let [(private, _)] = connects(&actions)[..] else { panic!("one private connection") };
    let now = kit.clock.now();
    kit.engine.handle_input(now, Input::WriteBlocked { conn: private });
    assert_eq!(readable(&kit.drain(), client), [false]);
    kit.engine.handle_input(now, Input::WriteBlocked { conn: private });
    assert!(readable(&kit.drain(), client).is_empty(), "already paused");
    kit.engine.handle_input(now, Input::Drained { conn: private });
    assert_eq!(readable(&kit.drain(), client), [true]);
    // Blocked when the upload ends: the client is read again, since nothing more of it goes there.
    kit.engine.handle_input(now, Input::WriteBlocked { conn: private });
    kit.drain();
    let actions = feed_in_pieces(&mut kit, client, &request[half..], 256 * 1024);
    assert_eq!(readable(&actions, client), [true]);
}

#[test]
fn a_client_that_leaves_mid_upload_has_its_connection_closed_not_reused() {
    let (mut kit, client) = kit_with_client();
    let (request, private) = half_uploaded(&mut kit, client, 6);
    kit.closed(client);
    let actions = kit.drain();
    assert!(closes(&actions, private), "it holds half a request");
    assert!(sent_on(&actions, private).is_empty(), "no RESET after half a value");

    // The next client's upload gets a connection of its own.
    let next = kit.accept();
    let actions = feed_in_pieces(&mut kit, next, &request, 256 * 1024);
    let [(fresh, _)] = connects(&actions)[..] else { panic!("a new private connection") };
    assert_ne!(fresh, private);
    assert!(sent_on(&actions, fresh) == request);
}

#[test]
fn a_connection_lost_mid_upload_fails_the_request_and_drops_the_rest_of_the_value() {
    let (mut kit, client) = kit_with_client();
    let (_, private) = half_uploaded(&mut kit, client, 7);
    kit.closed(private);
    let actions = kit.drain();
    let reply = sent_on(&actions, client);
    assert!(reply.starts_with(b"-ERR redis-proxy lost the connection"), "{}", String::from_utf8_lossy(&reply));
    assert!(closes(&actions, client), "its private connection is gone");
}

#[test]
fn behind_a_request_in_flight_the_value_waits_and_then_goes_on_in_order() {
    let (mut kit, client) = kit_with_client();
    kit.feed(client, GET_A);
    let actions = kit.drain();
    let [(shared, _)] = connects(&actions)[..] else { panic!("the shared connection: {actions:?}") };
    kit.connected(shared);
    let request = set_request(2 * UPLOAD_MIN, 8, b"\r\n");
    let actions = feed_in_pieces(&mut kit, client, &request[..UPLOAD_MIN], 256 * 1024);
    assert!(connects(&actions).is_empty(), "the order barrier holds the upload");
    kit.feed(shared, b"$1\r\n1\r\n");
    assert_eq!(sent_on(&kit.drain(), client), b"$1\r\n1\r\n");
    let actions = feed_in_pieces(&mut kit, client, &request[UPLOAD_MIN..], 256 * 1024);
    let [(private, _)] = connects(&actions)[..] else { panic!("one private connection") };
    assert!(sent_on(&actions, private) == request, "what was buffered goes first, then the rest");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any split of an upload, with a small request after it in the same stream, reaches the server byte-exact
    /// and in order, each request on the connection it belongs on.
    #[test]
    fn any_split_of_an_upload_arrives_byte_exact(
        cuts in proptest::collection::vec(1usize..(UPLOAD_MIN / 2), 1..12),
        seed in any::<u8>(),
    ) {
        let (mut kit, client) = kit_with_client();
        let request = set_request(UPLOAD_MIN + 17, seed, b"\r\n");
        let stream = [&request[..], GET_A].concat();
        let mut actions = Vec::new();
        let mut at = 0;
        for cut in cuts.iter().cycle() {
            if at >= stream.len() {
                break;
            }
            let end = (at + cut).min(stream.len());
            kit.feed(client, &stream[at..end]);
            actions.extend(kit.drain());
            at = end;
        }
        // One connection carries it all: the private one of the upload, where the GET follows behind it, or
        // the shared one when the value came whole in the first piece.
        let conns: Vec<ConnId> = connects(&actions).into_iter().map(|(conn, _)| conn).collect();
        prop_assert_eq!(conns.len(), 1);
        prop_assert!(sent_on(&actions, conns[0]) == stream);
    }
}
