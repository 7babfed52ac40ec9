//! The request path through the whole engine, on the test kit: reply order over master and replicas, the order
//! barrier when a client changes connection, the hold queue, pass-through, QUIT and protocol errors. Every test
//! asserts the exact actions (bytes, connects, closes) a runtime would perform.

use crate::client::HeldRequest;
use crate::testkit::{config, connects, port_of, sent_on, Driver, FakeServer};
use crate::{Action, ConnId, Mode};
use bytes::Bytes;
use std::time::Duration;

fn send(conn: ConnId, data: &'static [u8]) -> Action {
    Action::Send { conn, data: Bytes::from_static(data) }
}

/// The one connection `actions` open, to the server on `port`.
fn connect_to(actions: &[Action], port: u16) -> ConnId {
    let opened: Vec<ConnId> =
        connects(actions).into_iter().filter(|(_, address)| address.port == port).map(|(conn, _)| conn).collect();
    let [conn] = opened[..] else { panic!("expected one connect to port {port}: {actions:?}") };
    conn
}

/// Asserts that `actions` are exactly: open a connection to server `server`, then send each of `frames` on it;
/// reports it connected and returns it.
fn expect_new_connection(kit: &mut Driver, actions: &[Action], server: usize, frames: &[&'static [u8]]) -> ConnId {
    let conn = connect_to(actions, port_of(server));
    let mut expected = vec![Action::Connect { conn, address: kit.config.servers[server].clone() }];
    expected.extend(frames.iter().map(|frame| send(conn, frame)));
    assert_eq!(actions, expected);
    kit.connected(conn);
    conn
}

const GET_A: &[u8] = b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n";
const GET_B: &[u8] = b"*2\r\n$3\r\nGET\r\n$1\r\nb\r\n";
const SET_A: &[u8] = b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n";

/// A client's requests are in flight on one backend connection at a time: a request for another server waits
/// until every earlier reply is in, so replies come back in request order however fast each server answers.
#[test]
fn replies_keep_request_order_across_master_and_replica() {
    // Without read_your_writes, so that the read after the write goes back to the replica.
    let mut kit =
        Driver::with_master(crate::Config { mode: Mode::ReadsToSlaves, read_your_writes: false, ..config(2) });
    let client = kit.accept();
    kit.drain();
    kit.feed(client, &[GET_A, SET_A, GET_B].concat());
    let actions = kit.drain();
    let replica = connect_to(&actions, port_of(1));
    let master = connect_to(&actions, port_of(0));
    assert_eq!(
        actions,
        [
            Action::Connect { conn: replica, address: kit.config.servers[1].clone() },
            send(replica, GET_A),
            // The write's connection is opened at once, but the write waits for the read in flight on the replica.
            Action::Connect { conn: master, address: kit.config.servers[0].clone() },
        ]
    );
    kit.connect_all(&actions);
    assert_eq!(kit.drain(), []);

    kit.feed(replica, b"$2\r\nva\r\n");
    assert_eq!(kit.drain(), [send(client, b"$2\r\nva\r\n"), send(master, SET_A)]);
    kit.feed(master, b"+OK\r\n");
    assert_eq!(kit.drain(), [send(client, b"+OK\r\n"), send(replica, GET_B)]);
    kit.feed(replica, b"$2\r\nvb\r\n");
    assert_eq!(kit.drain(), [send(client, b"$2\r\nvb\r\n")]);
}

/// Replies from two clients' requests on one shared connection each go to their own client, in the FIFO order
/// the server answers them.
#[test]
fn a_shared_connection_matches_replies_to_clients_in_order() {
    let mut kit = Driver::with_master(crate::Config { pool_size: 1, ..config(1) });
    let first = kit.accept();
    let second = kit.accept();
    kit.drain();
    kit.feed(first, GET_A);
    kit.feed(second, &[GET_B, GET_A].concat());
    let actions = kit.drain();
    let shared = connect_to(&actions, port_of(0));
    assert_eq!(sent_on(&actions, shared), [GET_A, GET_B, GET_A].concat());
    kit.connected(shared);
    kit.feed(shared, b"$1\r\n1\r\n$1\r\n2\r\n$1\r\n3");
    assert_eq!(kit.drain(), [send(first, b"$1\r\n1\r\n"), send(second, b"$1\r\n2\r\n")]);
    kit.feed(shared, b"\r\n");
    assert_eq!(kit.drain(), [send(second, b"$1\r\n3\r\n")]);
}

#[test]
fn a_switch_to_a_private_connection_waits_for_replies_in_flight() {
    let mut kit = Driver::with_master(config(1));
    let client = kit.accept();
    kit.drain();
    kit.feed(client, GET_A);
    let actions = kit.drain();
    let shared = expect_new_connection(&mut kit, &actions, 0, &[GET_A]);

    // MULTI needs a private connection; the GET's reply is still due on the shared one, so MULTI waits.
    kit.feed(client, b"*1\r\n$5\r\nMULTI\r\n");
    assert_eq!(kit.drain(), []);
    kit.feed(shared, b"$1\r\n1\r\n");
    let actions = kit.drain();
    let private = connect_to(&actions, port_of(0));
    assert_eq!(
        actions,
        [
            send(client, b"$1\r\n1\r\n"),
            Action::Connect { conn: private, address: kit.config.servers[0].clone() },
            send(private, b"*1\r\n$5\r\nMULTI\r\n"),
        ]
    );
    kit.connected(private);
    kit.feed(private, b"+OK\r\n");
    assert_eq!(kit.drain(), [send(client, b"+OK\r\n")]);
}

#[test]
fn held_requests_go_out_in_order_once_a_master_is_adopted() {
    let mut kit = Driver::new(config(1));
    let client = kit.accept();
    kit.feed(client, &[GET_A, GET_B].concat());
    assert_eq!(kit.drain(), [], "no master yet: both requests are held");

    let actions = kit.probe_round(&mut [FakeServer::master(port_of(0))]);
    let shared = expect_new_connection(&mut kit, &actions, 0, &[GET_A, GET_B]);
    kit.feed(shared, b"$1\r\n1\r\n$1\r\n2\r\n");
    assert_eq!(kit.drain(), [send(client, b"$1\r\n1\r\n"), send(client, b"$1\r\n2\r\n")]);
}

#[test]
fn held_requests_expire_with_masterdown_after_hold_ms() {
    let mut kit = Driver::new(crate::Config { hold: Duration::from_millis(500), ..config(1) });
    let client = kit.accept();
    kit.feed(client, &[GET_A, GET_B].concat());
    kit.advance(Duration::from_millis(499));
    let to_client = |actions: Vec<Action>| -> Vec<Action> {
        actions.into_iter().filter(|a| matches!(a, Action::Send { conn, .. } if *conn == client)).collect()
    };
    assert_eq!(to_client(kit.drain()), [], "held until hold_ms has passed");
    kit.advance(Duration::from_millis(1));
    let error = b"-MASTERDOWN no master is available: redis-proxy held the request for 500 ms\r\n";
    assert_eq!(to_client(kit.drain()), [send(client, error), send(client, error)]);
}

#[test]
fn a_request_over_hold_max_bytes_gets_an_error_at_once() {
    let held_cost = GET_A.len() + std::mem::size_of::<HeldRequest>();
    let mut kit =
        Driver::new(crate::Config { hold_max_bytes: held_cost, hold: Duration::from_millis(500), ..config(1) });
    let client = kit.accept();
    kit.drain();
    kit.feed(client, SET_A);
    assert_eq!(
        kit.drain(),
        [send(client, b"-MASTERDOWN no master is available: redis-proxy held the request for 500 ms\r\n")],
        "a request larger than the whole hold budget is refused at once"
    );
}

#[test]
fn subscribe_passes_pushed_frames_straight_through() {
    let mut kit = Driver::with_master(config(1));
    let client = kit.accept();
    kit.drain();
    let subscribe: &'static [u8] = b"*2\r\n$9\r\nSUBSCRIBE\r\n$2\r\nch\r\n";
    kit.feed(client, subscribe);
    let actions = kit.drain();
    let private = expect_new_connection(&mut kit, &actions, 0, &[subscribe]);
    let confirmation: &[u8] = b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n";
    let message: &[u8] = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n";
    kit.feed(private, confirmation);
    assert_eq!(kit.drain(), [send(client, b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n")]);
    kit.feed(private, &[message, message].concat());
    assert_eq!(
        kit.drain(),
        [
            send(client, b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n"),
            send(client, b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n"),
        ]
    );
}

#[test]
fn quit_after_pipelined_requests_answers_them_then_ok_then_closes() {
    let mut kit = Driver::with_master(config(1));
    let client = kit.accept();
    kit.drain();
    kit.feed(client, &[GET_A, GET_B, b"*1\r\n$4\r\nQUIT\r\n"].concat());
    let actions = kit.drain();
    let shared = expect_new_connection(&mut kit, &actions, 0, &[GET_A, GET_B]);
    kit.feed(shared, b"$1\r\n1\r\n$1\r\n2\r\n");
    assert_eq!(
        kit.drain(),
        [
            send(client, b"$1\r\n1\r\n"),
            send(client, b"$1\r\n2\r\n"),
            send(client, b"+OK\r\n"),
            Action::Close { conn: client }
        ]
    );
}

#[test]
fn a_protocol_error_answers_held_requests_first_then_the_error_then_closes() {
    let mut kit = Driver::new(config(1));
    let client = kit.accept();
    kit.drain();
    kit.feed(client, &[GET_A, b"*x\r\n"].concat());
    assert_eq!(
        kit.drain(),
        [
            send(client, b"-ERR redis-proxy did not send this command: a protocol error followed it\r\n"),
            send(client, b"-ERR Protocol error: invalid multibulk length\r\n"),
            Action::Close { conn: client },
        ]
    );
}

#[test]
fn a_protocol_error_waits_behind_replies_in_flight() {
    let mut kit = Driver::with_master(config(1));
    let client = kit.accept();
    kit.drain();
    kit.feed(client, &[GET_A, b"*x\r\n"].concat());
    let actions = kit.drain();
    let shared = expect_new_connection(&mut kit, &actions, 0, &[GET_A]);
    kit.feed(shared, b"$1\r\n1\r\n");
    assert_eq!(
        kit.drain(),
        [
            send(client, b"$1\r\n1\r\n"),
            send(client, b"-ERR Protocol error: invalid multibulk length\r\n"),
            Action::Close { conn: client },
        ]
    );
}

/// The error for a request over the hold budget must not overtake the reply of an earlier request still held:
/// the client would take it for that request's reply.
#[test]
fn an_over_budget_error_waits_behind_held_requests() {
    let held_cost = GET_A.len() + std::mem::size_of::<HeldRequest>();
    let mut kit =
        Driver::new(crate::Config { hold_max_bytes: held_cost, hold: Duration::from_millis(500), ..config(1) });
    let client = kit.accept();
    kit.drain();
    kit.feed(client, &[GET_A, GET_B].concat());
    assert_eq!(kit.drain(), [], "GET a is held, so GET b's error must wait behind it");
    let actions = kit.probe_round(&mut [FakeServer::master(port_of(0))]);
    let shared = connect_to(&actions, port_of(0));
    kit.connected(shared);
    kit.feed(shared, b"$1\r\n1\r\n");
    assert_eq!(
        kit.drain(),
        [
            send(client, b"$1\r\n1\r\n"),
            send(client, b"-MASTERDOWN no master is available: redis-proxy held the request for 500 ms\r\n"),
        ]
    );
}

#[test]
fn a_reload_that_replaces_every_server_before_a_master_is_known_applies_whole() {
    let mut kit = Driver::new(config(2));
    let replaced = crate::Config::with_servers(
        (5..7).map(|i| crate::ServerAddress { host: "127.0.0.1".into(), port: port_of(i) }).collect(),
    );
    let changes = kit.engine.reconfigure(kit.clock.now(), replaced).expect("the reload is taken");
    assert_eq!(changes.len(), 4, "two added, two removed: {changes:?}");
    let ports: Vec<u16> = kit.engine.servers().iter().map(|s| s.port).collect();
    assert_eq!(ports, vec![port_of(5), port_of(6)], "the new servers only, none of the old left");
}
