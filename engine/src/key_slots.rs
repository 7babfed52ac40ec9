//! Where a request's keys hash in a cluster: no key, one slot, or several; and how the multi-key commands that a
//! cluster client splits (`MGET`, `MSET`, `DEL`, `UNLINK`, `EXISTS`, `TOUCH`) are cut into one request per slot.

use crate::command::{CommandFlags, CommandSpec};
use crate::resp::Request;
use crate::slot::key_slot;
use bytes::Bytes;
use smallvec::SmallVec;

/// The slots of a request's keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeySlots {
    /// It names no key.
    Keyless,
    /// Every key hashes to this slot.
    One(u16),
    /// Its keys hash to several slots.
    Cross,
}

impl KeySlots {
    fn with(self, key: &[u8]) -> KeySlots {
        let slot = key_slot(key);
        match self {
            KeySlots::Keyless => KeySlots::One(slot),
            KeySlots::One(s) if s == slot => self,
            _ => KeySlots::Cross,
        }
    }
}

/// A number argument, if it is one and at most `max`.
fn count_at(request: &Request, index: usize, max: usize) -> Option<usize> {
    let text = std::str::from_utf8(request.arg(index)?).ok()?;
    text.parse::<usize>().ok().filter(|n| *n <= max)
}

/// The argument indexes of the keys of a command whose keys move with its arguments, Redis's own way; None when
/// the arguments are malformed (the server then answers the error).
fn movable_keys(request: &Request, spec: &CommandSpec) -> Option<SmallVec<[usize; 8]>> {
    let argc = request.arg_count();
    let counted = |numkeys_at: usize, extra: &[usize]| -> Option<SmallVec<[usize; 8]>> {
        let n = count_at(request, numkeys_at, argc.saturating_sub(numkeys_at + 1))?;
        Some(extra.iter().copied().chain(numkeys_at + 1..numkeys_at + 1 + n).collect())
    };
    let with_store = |first: usize, option: &[u8]| -> SmallVec<[usize; 8]> {
        let mut keys: SmallVec<[usize; 8]> = SmallVec::from_slice(&[first]);
        for i in first + 1..argc {
            if request.arg(i).is_some_and(|a| a.eq_ignore_ascii_case(option) || a.eq_ignore_ascii_case(b"storedist"))
                && i + 1 < argc
            {
                keys.push(i + 1);
            }
        }
        keys
    };
    match spec.name {
        "eval" | "eval_ro" | "evalsha" | "evalsha_ro" | "fcall" | "fcall_ro" | "blmpop" | "bzmpop" => counted(2, &[]),
        "lmpop" | "zmpop" | "sintercard" | "zdiff" | "zinter" | "zintercard" | "zunion" => counted(1, &[]),
        "zdiffstore" | "zinterstore" | "zunionstore" => counted(2, &[1]),
        "xread" | "xreadgroup" => {
            let streams = (1..argc).find(|&i| request.arg(i).is_some_and(|a| a.eq_ignore_ascii_case(b"streams")))?;
            let rest = argc - streams - 1;
            Some((streams + 1..streams + 1 + rest / 2).collect())
        }
        "georadius" | "georadiusbymember" | "sort" | "sort_ro" => Some(with_store(1, b"store")),
        _ => Some(spec.key_indexes(argc).collect()),
    }
}

/// The slots of the keys of `request`, a `spec` command.
pub(crate) fn key_slots(request: &Request, spec: &CommandSpec) -> KeySlots {
    // The common case first (GET, SET, INCR ...: one key at a fixed place), without the range iterator: it ran
    // for every request and cost about 70 instructions of the ~300 a GET's slot took (callgrind).
    if spec.first_key > 0 && spec.first_key == spec.last_key && !spec.flags.contains(CommandFlags::MOVABLE_KEYS) {
        return match request.arg(spec.first_key as usize) {
            Some(key) => KeySlots::One(key_slot(key)),
            None => KeySlots::Keyless,
        };
    }
    key_slots_by_spec(request, spec)
}

/// The slots of the keys of `request`, a `spec` command, by its key range (or its movable keys).
fn key_slots_by_spec(request: &Request, spec: &CommandSpec) -> KeySlots {
    let mut slots = KeySlots::Keyless;
    if spec.flags.contains(CommandFlags::MOVABLE_KEYS) {
        for index in movable_keys(request, spec).unwrap_or_default() {
            slots = request.arg(index).map_or(slots, |key| slots.with(key));
        }
    } else {
        for index in spec.key_indexes(request.arg_count()) {
            slots = request.arg(index).map_or(slots, |key| slots.with(key));
        }
    }
    slots
}

/// How the replies of a command split by slot are put back together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Merge {
    /// `MGET`: the values, back in the client's key order.
    Values,
    /// `MSET`: `OK` once every part said it.
    Ok,
    /// `DEL`, `UNLINK`, `EXISTS`, `TOUCH`, and `DBSIZE` over every primary: the sum of the counts.
    Sum,
    /// `SCRIPT LOAD` and the like over every primary: the reply they all gave.
    Same,
    /// `KEYS` over every primary: their arrays joined.
    Concat,
    /// `RANDOMKEY` over every primary: one of the keys they drew (null only when every primary is empty).
    AnyKey,
    /// `INFO keyspace` over every primary: each database's key and expiring-key counts summed.
    Keyspace,
}

/// How a command is split by slot, if it is one a cluster client splits.
pub(crate) fn split_merge(spec: &CommandSpec) -> Option<Merge> {
    match spec.name {
        "mget" => Some(Merge::Values),
        "mset" => Some(Merge::Ok),
        "del" | "unlink" | "exists" | "touch" => Some(Merge::Sum),
        _ => None,
    }
}

/// One slot's part of a split request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Part {
    /// The slot of its keys.
    pub(crate) slot: u16,
    /// The request for that slot: the command with that slot's keys (and values), in the client's order.
    pub(crate) request: Bytes,
    /// Where each of its keys stands among the client's keys (for `MGET`'s values).
    pub(crate) positions: Vec<usize>,
}

/// `request` cut into one request per slot, slots in the order their first key comes. `merge` says how the
/// arguments pair up: `MSET` takes a key and a value, the others keys alone.
pub(crate) fn split(request: &Request, merge: Merge) -> Vec<Part> {
    split_by(request, merge, false)
}

/// `request` cut into one request per key: for a slot being migrated, where the keys of one request may be on two
/// nodes and the server answers `TRYAGAIN` until the migration ends.
pub(crate) fn split_per_key(request: &Request, merge: Merge) -> Vec<Part> {
    split_by(request, merge, true)
}

fn split_by(request: &Request, merge: Merge, per_key: bool) -> Vec<Part> {
    let step = if merge == Merge::Ok { 2 } else { 1 };
    let Some(name) = request.arg(0) else { return Vec::new() };
    /// One slot's arguments so far, and where its keys stand.
    struct Group<'r> {
        slot: u16,
        args: Vec<&'r [u8]>,
        positions: Vec<usize>,
    }
    let mut groups: Vec<Group<'_>> = Vec::new();
    let mut position = 0;
    let mut index = 1;
    while index + step <= request.arg_count() {
        let Some(key) = request.arg(index) else { break };
        let slot = key_slot(key);
        let at = match groups.iter().position(|g| g.slot == slot && !per_key) {
            Some(at) => at,
            None => {
                groups.push(Group { slot, args: vec![name], positions: Vec::new() });
                groups.len() - 1
            }
        };
        let group = &mut groups[at];
        for arg in index..index + step {
            group.args.extend(request.arg(arg));
        }
        group.positions.push(position);
        position += 1;
        index += step;
    }
    groups
        .into_iter()
        .map(|g| Part { slot: g.slot, request: Request::from_args(&g.args).frame().clone(), positions: g.positions })
        .collect()
}

/// The arguments of `frame`, a request in multibulk form (as a request kept for a resend is); None for anything
/// else. A parser of its own, not the request scanner: a second caller of the scanner changes how the compiler
/// inlines it into the read path (`bench/instructions.sh`), and this runs only after a `TRYAGAIN`.
pub(crate) fn multibulk_args(frame: &[u8]) -> Option<Vec<&[u8]>> {
    fn number(frame: &[u8], at: usize, kind: u8) -> Option<(usize, usize)> {
        let end = at + memchr::memchr(b'\r', frame.get(at..)?)?;
        (frame.get(at) == Some(&kind)).then_some(())?;
        let value = std::str::from_utf8(frame.get(at + 1..end)?).ok()?.parse().ok()?;
        Some((value, end + 2))
    }
    let (count, mut at) = number(frame, 0, b'*')?;
    let mut args = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let (len, start) = number(frame, at, b'$')?;
        args.push(frame.get(start..start.checked_add(len)?)?);
        at = start + len + 2;
    }
    (at == frame.len()).then_some(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::lookup;

    fn slots(args: &[&str]) -> KeySlots {
        let request = Request::from_args(args);
        key_slots(&request, lookup(args[0].as_bytes()).expect("known"))
    }

    /// The one-key shortcut of [`key_slots`] agrees with the key range of every command it takes, at every
    /// argument count (a missing key included).
    #[test]
    fn the_one_key_shortcut_agrees_with_the_key_range() {
        let mut checked = 0;
        for top in crate::command::all() {
            for spec in std::iter::once(top).chain(top.subcommands) {
                let names: Vec<&str> = spec.name.split('|').collect();
                for argc in names.len()..8 {
                    let mut args: Vec<String> = names.iter().map(|n| n.to_string()).collect();
                    args.extend((args.len()..argc).map(|i| format!("key{i}")));
                    let request = Request::from_args(&args);
                    assert_eq!(key_slots(&request, spec), key_slots_by_spec(&request, spec), "{args:?}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 1000, "{checked}");
    }

    #[test]
    fn keys_by_the_command_table() {
        assert_eq!(slots(&["get", "foo"]), KeySlots::One(12182));
        assert_eq!(slots(&["ping"]), KeySlots::Keyless);
        assert_eq!(slots(&["mset", "{a}1", "v", "{a}2", "v"]), KeySlots::One(key_slot(b"a")));
        assert_eq!(slots(&["mset", "foo", "v", "bar", "v"]), KeySlots::Cross);
        assert_eq!(slots(&["rename", "foo", "bar"]), KeySlots::Cross);
        assert_eq!(slots(&["set", "foo", "bar"]), KeySlots::One(12182));
    }

    #[test]
    fn keys_that_move_with_the_arguments() {
        assert_eq!(slots(&["eval", "return 1", "0"]), KeySlots::Keyless);
        assert_eq!(slots(&["eval", "return 1", "1", "foo", "bar"]), KeySlots::One(12182));
        assert_eq!(slots(&["eval", "return 1", "2", "foo", "bar"]), KeySlots::Cross);
        // A bad key count is left to the server to refuse.
        assert_eq!(slots(&["eval", "return 1", "9", "foo"]), KeySlots::Keyless);
        assert_eq!(slots(&["zunionstore", "{x}d", "2", "{x}a", "{x}b"]), KeySlots::One(key_slot(b"x")));
        assert_eq!(slots(&["zunionstore", "d", "2", "a", "b"]), KeySlots::Cross);
        assert_eq!(slots(&["xread", "count", "2", "streams", "foo", "0"]), KeySlots::One(12182));
        assert_eq!(slots(&["xread", "streams", "foo", "bar", "0", "0"]), KeySlots::Cross);
        assert_eq!(slots(&["blmpop", "0", "1", "foo", "left"]), KeySlots::One(12182));
        assert_eq!(slots(&["sort", "foo", "store", "bar"]), KeySlots::Cross);
        assert_eq!(slots(&["georadius", "foo", "0", "0", "1", "km"]), KeySlots::One(12182));
    }

    #[test]
    fn multibulk_frames_are_read_back() {
        let request = Request::from_args(&["MGET", "a", "bb"]);
        assert_eq!(multibulk_args(request.frame()), Some(vec![&b"MGET"[..], b"a", b"bb"]));
        assert_eq!(multibulk_args(b"MGET a bb\r\n"), None);
        assert_eq!(multibulk_args(b"*2\r\n$4\r\nMGET\r\n$9\r\na\r\n"), None);
        assert_eq!(multibulk_args(b"*1\r\n$99999999999999999999\r\n"), None);
    }

    #[test]
    fn split_groups_keys_by_slot_in_first_seen_order() {
        let request = Request::from_args(&["MGET", "foo", "bar", "{foo}x", "bar"]);
        let parts = split(&request, Merge::Values);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].slot, 12182);
        assert_eq!(parts[0].request, Request::from_args(&["MGET", "foo", "{foo}x"]).frame().clone());
        assert_eq!(parts[0].positions, vec![0, 2]);
        assert_eq!(parts[1].positions, vec![1, 3]);
        let per_key = split_per_key(&request, Merge::Values);
        assert_eq!(per_key.len(), 4);
        assert_eq!(per_key[2].request, Request::from_args(&["MGET", "{foo}x"]).frame().clone());
        assert_eq!(per_key[2].positions, vec![2]);
        let mset = Request::from_args(&["MSET", "foo", "1", "bar", "2", "{foo}y", "3"]);
        let parts = split(&mset, Merge::Ok);
        assert_eq!(parts[0].request, Request::from_args(&["MSET", "foo", "1", "{foo}y", "3"]).frame().clone());
        assert_eq!(parts[1].request, Request::from_args(&["MSET", "bar", "2"]).frame().clone());
    }
}
