//! Drift test: the checked-in command table (`engine::command`) against the `COMMAND` reply of the installed
//! `redis-server`. On failure, regenerate with `python3 tools/gen-command-table.py`.

use std::collections::BTreeSet;

use redis_proxy_engine::command::{self, CommandFlags, CommandSpec};
use redis_proxy_tests::{RedisServer, Reply};

/// One command as the live server reports it.
#[derive(Debug)]
struct Live {
    name: String,
    arity: i64,
    flags: Vec<String>,
    first_key: i64,
    last_key: i64,
    key_step: i64,
    subcommands: Vec<Live>,
}

fn text(reply: &Reply) -> String {
    match reply {
        Reply::Status(s) => s.clone(),
        Reply::Bulk(Some(b)) => String::from_utf8(b.clone()).expect("UTF-8 name"),
        other => panic!("expected a string, got {other:?}"),
    }
}

fn int(reply: &Reply) -> i64 {
    match reply {
        Reply::Int(i) => *i,
        other => panic!("expected an integer, got {other:?}"),
    }
}

fn array(reply: &Reply) -> &[Reply] {
    match reply {
        Reply::Array(Some(items)) => items,
        other => panic!("expected an array, got {other:?}"),
    }
}

fn parse(entry: &Reply) -> Live {
    let fields = array(entry);
    assert!(fields.len() >= 10, "Redis 7 COMMAND entries have 10 fields: {entry:?}");
    Live {
        name: text(&fields[0]).to_ascii_lowercase(),
        arity: int(&fields[1]),
        flags: array(&fields[2]).iter().map(text).collect(),
        first_key: int(&fields[3]),
        last_key: int(&fields[4]),
        key_step: int(&fields[5]),
        subcommands: array(&fields[9]).iter().map(parse).collect(),
    }
}

/// Compares one live command with its table entry; pushes every difference onto `errors`.
fn compare(live: &Live, spec: &CommandSpec, errors: &mut Vec<String>) {
    let name = &live.name;
    if spec.arity as i64 != live.arity {
        errors.push(format!("{name}: arity {} in the table, {} live", spec.arity, live.arity));
    }
    let mut flags = CommandFlags::EMPTY;
    for flag in &live.flags {
        match CommandFlags::from_name(flag) {
            Some(f) => flags = flags.union(f),
            None => errors.push(format!("{name}: live flag {flag:?} has no CommandFlags const")),
        }
    }
    if spec.flags != flags {
        errors.push(format!(
            "{name}: flags {:?} in the table, {:?} live",
            spec.flags.names().collect::<Vec<_>>(),
            live.flags
        ));
    }
    let table_keys = (spec.first_key as i64, spec.last_key as i64, spec.key_step as i64);
    let live_keys = (live.first_key, live.last_key, live.key_step);
    if table_keys != live_keys {
        errors.push(format!("{name}: key spec (first, last, step) {table_keys:?} in the table, {live_keys:?} live"));
    }

    let live_subs: BTreeSet<&str> = live.subcommands.iter().map(|s| s.name.as_str()).collect();
    for sub in &live.subcommands {
        let (container, bare) = sub.name.split_once('|').expect("subcommand name has a |");
        assert_eq!(container, name.as_str());
        // Resolve the way a request would, upper-cased, to exercise the real lookup path.
        match command::resolve(container.to_uppercase().as_bytes(), Some(bare.to_uppercase().as_bytes())) {
            Some(found) if found.name == sub.name => compare(sub, found, errors),
            _ => errors.push(format!("{}: live subcommand missing from the table", sub.name)),
        }
    }
    for sub in spec.subcommands {
        if !live_subs.contains(sub.name) {
            errors.push(format!("{}: in the table but not reported by the server", sub.name));
        }
    }
}

#[test]
fn checked_in_table_matches_live_server() {
    let server = RedisServer::start();
    let mut conn = server.connect();
    let reply = conn.call(&[b"COMMAND"]);
    let live: Vec<Live> = array(&reply).iter().map(parse).collect();
    assert!(live.len() > 200, "COMMAND returned only {} commands", live.len());

    let mut errors = Vec::new();
    for cmd in &live {
        match command::lookup(cmd.name.to_uppercase().as_bytes()) {
            Some(spec) if spec.name == cmd.name => compare(cmd, spec, &mut errors),
            _ => errors.push(format!("{}: live command missing from the table", cmd.name)),
        }
    }
    let live_names: BTreeSet<&str> = live.iter().map(|c| c.name.as_str()).collect();
    for spec in command::all() {
        if !live_names.contains(spec.name) {
            errors.push(format!("{}: in the table but not reported by the server", spec.name));
        }
    }

    assert!(
        errors.is_empty(),
        "the command table (generated from Redis {}) drifted from the installed redis-server; \
         regenerate it with `python3 tools/gen-command-table.py`:\n  {}",
        command::redis_version(),
        errors.join("\n  ")
    );
}
