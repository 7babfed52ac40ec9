//! Large replies streamed through the whole engine, on the test kit: byte-exact in any split, only to a client
//! owed the reply next, backpressure from a client that does not read, a client or a backend that goes away
//! mid-stream, the replies behind a streamed one on a shared connection, and clients that move large values
//! moving to the connections set aside for them.

use crate::stream::{STREAM_MIN, STREAM_STALL};
use crate::testkit::{config, connects, readable, sent_on, Driver};
use crate::{Action, ConnId, Input};
use proptest::prelude::*;
use std::time::Duration;

const GET_A: &[u8] = b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n";
const GET_B: &[u8] = b"*2\r\n$3\r\nGET\r\n$1\r\nb\r\n";

/// A bulk reply of `len` bytes whose every byte depends on its position (and `seed`), so a byte out of place
/// shows.
fn bulk(len: usize, seed: u8) -> Vec<u8> {
    let mut reply = format!("${len}\r\n").into_bytes();
    reply.extend((0..len).map(|i| (i % 251) as u8 ^ seed));
    reply.extend_from_slice(b"\r\n");
    reply
}

/// An engine with one shared connection (`pool_size` 1) to its master, and `count` clients.
fn kit_with_clients(count: usize) -> (Driver, Vec<ConnId>) {
    kit_with(crate::Config { pool_size: 1, ..config(1) }, count)
}

/// An engine for `config` with its server 0 as master, and `count` clients.
fn kit_with(config: crate::Config, count: usize) -> (Driver, Vec<ConnId>) {
    let mut kit = Driver::with_master(config);
    let clients = (0..count).map(|_| kit.accept()).collect();
    kit.drain();
    (kit, clients)
}

/// Sends each `(client, request)` in order, and returns the shared connection they went on, connected.
fn send_requests(kit: &mut Driver, requests: &[(ConnId, &[u8])]) -> ConnId {
    let mut actions = Vec::new();
    for (client, request) in requests {
        kit.feed(*client, request);
        actions.extend(kit.drain());
    }
    let [(shared, _)] = connects(&actions)[..] else { panic!("one shared connection: {actions:?}") };
    assert_eq!(sent_on(&actions, shared), requests.iter().flat_map(|(_, r)| r.iter().copied()).collect::<Vec<_>>());
    kit.connected(shared);
    shared
}

fn writes_to(actions: &[Action], conn: ConnId) -> usize {
    actions.iter().filter(|a| matches!(a, Action::Send { conn: to, .. } if *to == conn)).count()
}

#[test]
fn a_large_reply_fed_in_small_pieces_goes_out_piece_by_piece_byte_exact() {
    let (mut kit, clients) = kit_with_clients(1);
    let shared = send_requests(&mut kit, &[(clients[0], GET_A)]);
    let reply = bulk(3 * STREAM_MIN, 1);
    let mut got = Vec::new();
    for (n, piece) in reply.chunks(1000).enumerate() {
        kit.feed(shared, piece);
        let actions = kit.drain();
        if n > 0 {
            // The header's piece is held until the length is known to be large; every later one goes at once.
            assert_eq!(writes_to(&actions, clients[0]), 1, "piece {n} is forwarded as it arrives: {actions:?}");
        }
        got.extend(sent_on(&actions, clients[0]));
    }
    assert_eq!(got, reply);
}

#[test]
fn a_large_reply_for_a_client_owed_another_reply_first_is_held_whole() {
    // `WAIT` is answered by the proxy, in its slot before the GET's: the GET's reply must wait for it.
    let mut kit = Driver::with_master(crate::Config { pool_size: 1, ..config(2) });
    let client = kit.accept();
    kit.drain();
    let set = b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n";
    let shared = send_requests(&mut kit, &[(client, set)]);
    kit.feed(shared, b"+OK\r\n");
    assert_eq!(sent_on(&kit.drain(), client), b"+OK\r\n");
    kit.feed(client, b"*3\r\n$4\r\nWAIT\r\n$1\r\n1\r\n$3\r\n100\r\n");
    kit.feed(client, GET_A);
    assert_eq!(sent_on(&kit.drain(), shared), GET_A, "the GET goes out while the WAIT waits");

    let reply = bulk(2 * STREAM_MIN, 2);
    let half = reply.len() / 2;
    for piece in reply[..half].chunks(5000) {
        kit.feed(shared, piece);
        assert_eq!(writes_to(&kit.drain(), client), 0, "nothing overtakes the WAIT's reply");
    }
    kit.advance(Duration::from_millis(100));
    let actions = kit.drain();
    let wait_reply = sent_on(&actions, client);
    assert!(wait_reply.starts_with(b":") && wait_reply.ends_with(b"\r\n"), "{wait_reply:?}");
    // Now owed next: what came so far goes out with the next piece, and the rest as it arrives.
    let mut got = Vec::new();
    for piece in reply[half..].chunks(5000) {
        kit.feed(shared, piece);
        got.extend(sent_on(&kit.drain(), client));
    }
    assert_eq!(got, reply);
}

#[test]
fn a_client_that_leaves_mid_stream_gets_nothing_more_and_the_replies_behind_it_arrive() {
    let (mut kit, clients) = kit_with_clients(2);
    let (leaver, other) = (clients[0], clients[1]);
    let shared = send_requests(&mut kit, &[(leaver, GET_A), (other, GET_B)]);
    let reply = bulk(4 * STREAM_MIN, 3);
    kit.feed(shared, &reply[..STREAM_MIN]);
    assert_eq!(sent_on(&kit.drain(), leaver), &reply[..STREAM_MIN]);
    kit.closed(leaver);
    kit.drain();
    let now = kit.clock.now();
    kit.engine.handle_input(now, Input::WriteBlocked { conn: leaver });
    assert_eq!(kit.drain(), [], "a stale id pauses nothing");
    let mut rest = reply[STREAM_MIN..].to_vec();
    rest.extend_from_slice(b"$2\r\nvb\r\n");
    let mut actions = Vec::new();
    for piece in rest.chunks(7000) {
        kit.feed(shared, piece);
        actions.extend(kit.drain());
    }
    assert_eq!(writes_to(&actions, leaver), 0, "{actions:?}");
    assert_eq!(sent_on(&actions, other), b"$2\r\nvb\r\n");
}

#[test]
fn a_blocked_client_pauses_reading_its_backend_until_it_drains() {
    let (mut kit, clients) = kit_with_clients(1);
    let client = clients[0];
    let shared = send_requests(&mut kit, &[(client, GET_A)]);
    let reply = bulk(3 * STREAM_MIN, 4);
    let now = kit.clock.now();
    let mut got = Vec::new();
    kit.feed(shared, &reply[..STREAM_MIN]);
    got.extend(sent_on(&kit.drain(), client));
    kit.engine.handle_input(now, Input::WriteBlocked { conn: client });
    assert_eq!(readable(&kit.drain(), shared), [false]);
    kit.engine.handle_input(now, Input::Drained { conn: client });
    assert_eq!(readable(&kit.drain(), shared), [true]);

    // Blocked when more arrives (the runtime had read it before it heard): paused at once, resumed on drain.
    kit.engine.handle_input(now, Input::WriteBlocked { conn: client });
    assert_eq!(readable(&kit.drain(), shared), [false]);
    kit.feed(shared, &reply[STREAM_MIN..2 * STREAM_MIN]);
    let actions = kit.drain();
    assert!(readable(&actions, shared).is_empty(), "already paused");
    got.extend(sent_on(&actions, client));
    kit.engine.handle_input(now, Input::Drained { conn: client });
    assert_eq!(readable(&kit.drain(), shared), [true]);
    kit.feed(shared, &reply[2 * STREAM_MIN..]);
    got.extend(sent_on(&kit.drain(), client));
    assert_eq!(got, reply);
}

#[test]
fn a_client_that_leaves_while_its_stream_is_paused_lets_the_connection_move_on() {
    let (mut kit, clients) = kit_with_clients(2);
    let (leaver, other) = (clients[0], clients[1]);
    let shared = send_requests(&mut kit, &[(leaver, GET_A), (other, GET_B)]);
    let reply = bulk(3 * STREAM_MIN, 4);
    let now = kit.clock.now();
    kit.engine.handle_input(now, Input::WriteBlocked { conn: leaver });
    kit.drain();
    kit.feed(shared, &reply[..STREAM_MIN]);
    assert_eq!(readable(&kit.drain(), shared), [false], "blocked before the stream began: paused at once");
    kit.closed(leaver);
    assert_eq!(readable(&kit.drain(), shared), [true], "the rest is read, and dropped");
    kit.feed(shared, &[&reply[STREAM_MIN..], b"$2\r\nvb\r\n"].concat());
    let actions = kit.drain();
    assert_eq!(writes_to(&actions, leaver), 0);
    assert_eq!(sent_on(&actions, other), b"$2\r\nvb\r\n");
}

#[test]
fn a_client_blocked_for_the_stall_bound_no_longer_holds_up_the_replies_behind_its_stream() {
    let (mut kit, clients) = kit_with_clients(2);
    let (stalled, other) = (clients[0], clients[1]);
    let shared = send_requests(&mut kit, &[(stalled, GET_A), (other, GET_B)]);
    let reply = bulk(3 * STREAM_MIN, 8);
    let now = kit.clock.now();
    kit.feed(shared, &reply[..STREAM_MIN]);
    let mut got = sent_on(&kit.drain(), stalled);
    kit.engine.handle_input(now, Input::WriteBlocked { conn: stalled });
    assert_eq!(readable(&kit.drain(), shared), [false]);
    assert!(kit.engine.poll_timeout().is_some_and(|(at, _)| at <= now + STREAM_STALL), "the engine wakes at the bound");
    kit.advance(STREAM_STALL - Duration::from_millis(1));
    assert!(readable(&kit.drain(), shared).is_empty(), "paced until the bound");
    kit.advance(Duration::from_millis(1));
    assert_eq!(readable(&kit.drain(), shared), [true], "read at full speed from the bound on");
    // The client is still blocked: the rest is queued for it all the same, and the next reply moves on.
    kit.feed(shared, &[&reply[STREAM_MIN..], b"$2\r\nvb\r\n"].concat());
    let actions = kit.drain();
    assert!(readable(&actions, shared).is_empty(), "{actions:?}");
    got.extend(sent_on(&actions, stalled));
    assert_eq!(got, reply);
    assert_eq!(sent_on(&actions, other), b"$2\r\nvb\r\n");
}

#[test]
fn a_backend_lost_mid_stream_closes_the_client_instead_of_appending_an_error() {
    let (mut kit, clients) = kit_with_clients(2);
    let (streamed, waiting) = (clients[0], clients[1]);
    let shared = send_requests(&mut kit, &[(streamed, GET_A), (waiting, GET_B)]);
    let reply = bulk(2 * STREAM_MIN, 5);
    kit.feed(shared, &reply[..STREAM_MIN]);
    kit.drain();
    kit.closed(shared);
    let actions = kit.drain();
    assert_eq!(writes_to(&actions, streamed), 0, "no error after half a value: {actions:?}");
    assert!(actions.contains(&Action::Close { conn: streamed }), "{actions:?}");
    assert!(sent_on(&actions, waiting).starts_with(b"-ERR redis-proxy lost the connection"), "{actions:?}");
}

#[test]
fn a_reply_without_its_crlf_gives_the_connection_up_and_closes_the_client() {
    let (mut kit, clients) = kit_with_clients(1);
    let shared = send_requests(&mut kit, &[(clients[0], GET_A)]);
    let mut reply = bulk(STREAM_MIN, 6);
    let end = reply.len();
    reply[end - 2..].copy_from_slice(b"XX");
    kit.feed(shared, &reply[..100]);
    kit.feed(shared, &reply[100..]);
    let actions = kit.drain();
    assert!(actions.contains(&Action::Close { conn: shared }), "{actions:?}");
    assert!(actions.contains(&Action::Close { conn: clients[0] }), "{actions:?}");
}

#[test]
fn replies_pipelined_behind_a_streamed_one_reach_their_own_clients() {
    let (mut kit, clients) = kit_with_clients(2);
    let (a, b) = (clients[0], clients[1]);
    let shared = send_requests(&mut kit, &[(a, GET_A), (b, GET_B), (a, GET_B)]);
    let big = bulk(STREAM_MIN + 10, 7);
    let stream = [&big[..], b"$2\r\nvb\r\n", b"$3\r\nvb2\r\n"].concat();
    let mut actions = Vec::new();
    // The last piece of the large value and the next replies arrive together.
    for piece in stream.chunks(STREAM_MIN / 3) {
        kit.feed(shared, piece);
        actions.extend(kit.drain());
    }
    assert_eq!(sent_on(&actions, a), [&big[..], b"$3\r\nvb2\r\n"].concat());
    assert_eq!(sent_on(&actions, b), b"$2\r\nvb\r\n");
}

/// A value in the proptest: large (streamed when its client is next) or small.
fn arb_len() -> impl Strategy<Value = usize> {
    prop_oneof![0usize..40, STREAM_MIN..STREAM_MIN + 3000]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// However the backend's bytes are split into reads, each client gets exactly the bytes it gets when they
    /// all arrive at once (then nothing is streamed: every reply is complete).
    #[test]
    fn any_split_gives_each_client_the_bytes_of_the_unsplit_stream(
        requests in proptest::collection::vec((0usize..3, arb_len()), 1..7),
        cuts in proptest::collection::vec(any::<usize>(), 0..24),
    ) {
        let run = |cuts: &[usize]| -> Vec<Vec<u8>> {
            let (mut kit, clients) = kit_with_clients(3);
            let sends: Vec<(ConnId, &[u8])> = requests.iter().map(|(c, _)| (clients[*c], GET_A)).collect();
            let shared = send_requests(&mut kit, &sends);
            let stream: Vec<u8> =
                requests.iter().enumerate().flat_map(|(i, (_, len))| bulk(*len, i as u8)).collect();
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
            points.sort_unstable();
            points.push(stream.len());
            let mut actions = Vec::new();
            let mut last = 0;
            for p in points {
                if p > last {
                    kit.feed(shared, &stream[last..p]);
                    actions.extend(kit.drain());
                }
                last = p;
            }
            clients.iter().map(|c| sent_on(&actions, *c)).collect()
        };
        let whole = run(&[]);
        let expected: Vec<Vec<u8>> = (0..3)
            .map(|c| requests.iter().enumerate().filter(|(_, r)| r.0 == c).flat_map(|(i, r)| bulk(r.1, i as u8)).collect())
            .collect();
        prop_assert_eq!(&whole, &expected);
        prop_assert_eq!(run(&cuts), whole);
    }
}

/// An engine with one shared connection for small values and `large_pool_size` for large ones, and two clients.
fn kit_with_lanes(large_pool_size: usize) -> (Driver, ConnId, ConnId) {
    let (kit, clients) = kit_with(crate::Config { pool_size: 1, large_pool_size, ..config(1) }, 2);
    (kit, clients[0], clients[1])
}

#[test]
fn a_client_sent_a_large_value_moves_to_the_large_values_connections_and_a_small_one_stays() {
    let (mut kit, large, small) = kit_with_lanes(1);
    let shared = send_requests(&mut kit, &[(large, GET_A), (small, GET_B)]);
    // Both replies in one read: the large one is complete, never streamed.
    let mut replies = bulk(STREAM_MIN, 1);
    replies.extend_from_slice(b"$1\r\nb\r\n");
    kit.feed(shared, &replies);
    kit.drain();
    kit.feed(small, GET_B);
    let actions = kit.drain();
    assert!(connects(&actions).is_empty(), "{actions:?}");
    assert_eq!(sent_on(&actions, shared), GET_B);
    kit.feed(large, GET_A);
    let actions = kit.drain();
    let [(lane, _)] = connects(&actions)[..] else { panic!("a connection for large values: {actions:?}") };
    assert_eq!(sent_on(&actions, lane), GET_A);
    assert!(sent_on(&actions, shared).is_empty());
}

#[test]
fn without_connections_for_large_values_a_client_sent_one_stays_where_it_was() {
    let (mut kit, large, _) = kit_with_lanes(0);
    let shared = send_requests(&mut kit, &[(large, GET_A)]);
    kit.feed(shared, &bulk(STREAM_MIN, 1));
    kit.drain();
    kit.feed(large, GET_A);
    let actions = kit.drain();
    assert!(connects(&actions).is_empty(), "{actions:?}");
    assert_eq!(sent_on(&actions, shared), GET_A);
}

#[test]
fn a_client_pipelining_behind_its_streamed_reply_moves_only_once_that_reply_is_in() {
    let (mut kit, large, _) = kit_with_lanes(1);
    let shared = send_requests(&mut kit, &[(large, GET_A)]);
    let reply = bulk(2 * STREAM_MIN, 3);
    let (head, rest) = reply.split_at(STREAM_MIN);
    kit.feed(shared, head);
    let mut got = sent_on(&kit.drain(), large);
    // Its next request goes to a connection for large values, but may not overtake the reply still streaming
    // on the shared one: it waits (the connection may open meanwhile).
    kit.feed(large, GET_B);
    let actions = kit.drain();
    let [(lane, _)] = connects(&actions)[..] else { panic!("a connection for large values: {actions:?}") };
    assert!(sent_on(&actions, lane).is_empty() && sent_on(&actions, shared).is_empty(), "{actions:?}");
    kit.feed(shared, rest);
    let actions = kit.drain();
    got.extend(sent_on(&actions, large));
    assert_eq!(got, reply);
    assert_eq!(sent_on(&actions, lane), GET_B);
}

#[test]
fn a_client_whose_request_value_is_large_moves_to_the_large_values_connections() {
    let (mut kit, large, _) = kit_with_lanes(1);
    let shared = send_requests(&mut kit, &[(large, GET_A)]);
    kit.feed(shared, b"$1\r\na\r\n");
    kit.drain();
    // Below the upload size: held whole, and sent once all of it is here.
    let value = vec![b'v'; STREAM_MIN];
    let mut set = format!("*3\r\n$3\r\nSET\r\n$1\r\na\r\n${}\r\n", value.len()).into_bytes();
    set.extend_from_slice(&value);
    set.extend_from_slice(b"\r\n");
    let (start, end) = set.split_at(100);
    kit.feed(large, start);
    assert!(connects(&kit.drain()).is_empty());
    kit.feed(large, end);
    let actions = kit.drain();
    let [(lane, _)] = connects(&actions)[..] else { panic!("a connection for large values: {actions:?}") };
    assert_eq!(sent_on(&actions, lane), set);
}
