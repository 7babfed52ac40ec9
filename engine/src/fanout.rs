//! One client request answered by several cluster nodes: the parts' replies collected, then merged into the one
//! reply the client gets (values back in its key order, counts summed, `OK` once every part said it).

use crate::conn::ConnId;
use crate::key_slots::Merge;
use crate::resp;
use bytes::{Bytes, BytesMut};

/// Who gets a fan-out's merged reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The client, in this reply slot.
    Client { conn: ConnId, seq: u64 },
    /// Part `index` of fan-out `fanout`: a part split again, key by key.
    Part { fanout: u32, index: usize },
}

/// A request split into parts, until every part has answered.
#[derive(Debug)]
pub(crate) struct Fanout {
    /// Who gets the merged reply.
    pub(crate) answer: Answer,
    merge: Merge,
    /// Each part's reply, once it came.
    replies: Vec<Option<Bytes>>,
    /// Each part's keys' places among the client's keys (for [`Merge::Values`]).
    positions: Vec<Vec<usize>>,
    /// Parts still to answer.
    remaining: usize,
}

impl Fanout {
    /// A fan-out of `positions.len()` parts whose merged reply goes to `answer`.
    pub(crate) fn new(answer: Answer, merge: Merge, positions: Vec<Vec<usize>>) -> Fanout {
        let parts = positions.len();
        Fanout { answer, merge, replies: vec![None; parts], positions, remaining: parts }
    }

    /// Part `index` answered `reply`; returns the merged reply once it was the last.
    pub(crate) fn answered(&mut self, index: usize, reply: Bytes) -> Option<Bytes> {
        let slot = self.replies.get_mut(index)?;
        if slot.replace(reply).is_none() {
            self.remaining -= 1;
        }
        (self.remaining == 0).then(|| self.merged())
    }

    /// The client's reply: the first part's error if a part failed, else the parts merged.
    fn merged(&self) -> Bytes {
        let replies: Vec<&Bytes> = self.replies.iter().flatten().collect();
        if let Some(error) = replies.iter().find(|r| matches!(r.first(), Some(b'-' | b'!'))) {
            return (*error).clone();
        }
        match self.merge {
            Merge::Values => self.values(&replies).unwrap_or_else(|| unexpected(&replies)),
            Merge::Sum => {
                let counts: Option<Vec<i64>> = replies.iter().map(|r| integer(r)).collect();
                match counts {
                    Some(counts) => Bytes::from(format!(":{}\r\n", counts.iter().sum::<i64>())),
                    None => unexpected(&replies),
                }
            }
            Merge::Ok => {
                if replies.iter().all(|r| r.as_ref() == b"+OK\r\n") {
                    resp::simple_reply("OK")
                } else {
                    unexpected(&replies)
                }
            }
            Merge::Same => match replies.first() {
                Some(first) if replies.iter().all(|r| r == first) => (*first).clone(),
                _ => resp::error_reply("ERR redis-proxy: the cluster's primaries answered differently"),
            },
            Merge::Concat => concat(&replies).unwrap_or_else(|| unexpected(&replies)),
            Merge::AnyKey => any_key(&replies).unwrap_or_else(|| unexpected(&replies)),
            Merge::Keyspace => keyspace(&replies).unwrap_or_else(|| unexpected(&replies)),
        }
    }

    /// The parts' arrays of values, put back in the order of the client's keys.
    fn values(&self, replies: &[&Bytes]) -> Option<Bytes> {
        let total: usize = self.positions.iter().map(Vec::len).sum();
        let mut values: Vec<Option<Bytes>> = vec![None; total];
        for (reply, positions) in replies.iter().zip(&self.positions) {
            let elements = array_elements(reply)?;
            if elements.len() != positions.len() {
                return None;
            }
            for (value, &at) in elements.into_iter().zip(positions) {
                *values.get_mut(at)? = Some(value);
            }
        }
        let mut out = BytesMut::with_capacity(16 + values.iter().flatten().map(Bytes::len).sum::<usize>());
        out.extend_from_slice(format!("*{total}\r\n").as_bytes());
        for value in values {
            out.extend_from_slice(&value?);
        }
        Some(out.freeze())
    }
}

/// The value of an integer reply.
fn integer(reply: &[u8]) -> Option<i64> {
    let text = reply.strip_prefix(b":")?.strip_suffix(b"\r\n")?;
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// The elements of an array of values (an `MGET` reply: bulk strings and nulls), each a whole frame; None for
/// anything else. A reader of its own, not the reply scanner: a second caller of the scanner changes how the
/// compiler inlines it into the read path (`bench/instructions.sh`).
fn array_elements(reply: &Bytes) -> Option<Vec<Bytes>> {
    let line_end = |at: usize| memchr::memchr(b'\r', reply.get(at..)?).map(|p| at + p);
    let number =
        |from: usize, to: usize| -> Option<i64> { std::str::from_utf8(reply.get(from..to)?).ok()?.parse().ok() };
    let end = line_end(0)?;
    (reply.first() == Some(&b'*')).then_some(())?;
    let count = usize::try_from(number(1, end)?).ok()?;
    let mut at = end + 2;
    let mut elements = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let end = line_end(at)?;
        let next = match reply.get(at)? {
            b'$' => match number(at + 1, end)? {
                -1 => end + 2,
                len => end + 2 + usize::try_from(len).ok()? + 2,
            },
            b'_' | b':' | b'+' => end + 2,
            _ => return None,
        };
        (next <= reply.len()).then_some(())?;
        elements.push(reply.slice(at..next));
        at = next;
    }
    (at == reply.len()).then_some(elements)
}

/// The parts' arrays as one array, in the parts' order.
fn concat(replies: &[&Bytes]) -> Option<Bytes> {
    let arrays: Vec<Vec<Bytes>> = replies.iter().map(|r| array_elements(r)).collect::<Option<_>>()?;
    let total: usize = arrays.iter().map(Vec::len).sum();
    let mut out = BytesMut::with_capacity(16 + arrays.iter().flatten().map(Bytes::len).sum::<usize>());
    out.extend_from_slice(format!("*{total}\r\n").as_bytes());
    for element in arrays.iter().flatten() {
        out.extend_from_slice(element);
    }
    Some(out.freeze())
}

/// One of the parts' keys, or the null they all gave. Which part's: chosen by the keys drawn, so that it varies
/// from call to call as they do (the engine has no random source of its own).
fn any_key(replies: &[&Bytes]) -> Option<Bytes> {
    let is_null = |r: &Bytes| matches!(r.as_ref(), b"$-1\r\n" | b"_\r\n");
    if !replies.iter().all(|r| r.first() == Some(&b'$') || is_null(r)) {
        return None;
    }
    let keys: Vec<&Bytes> = replies.iter().copied().filter(|r| !is_null(r)).collect();
    // FNV-1a over the keys drawn; its high bits, which every byte stirs.
    let hash = keys
        .iter()
        .flat_map(|k| k.iter())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
    let pick = usize::try_from(hash >> 33).unwrap_or(0) % keys.len().max(1);
    match keys.get(pick) {
        Some(key) => Some((*key).clone()),
        None => replies.first().map(|r| (*r).clone()),
    }
}

/// The parts' `INFO keyspace` texts as one: per database, `keys` and `expires` summed, `avg_ttl` averaged over the
/// expiring keys. Framed as the first part's (a bulk string, or RESP3's verbatim string).
fn keyspace(replies: &[&Bytes]) -> Option<Bytes> {
    let mut dbs: Vec<(String, u64, u64, u128)> = Vec::new();
    let mut verbatim = false;
    for reply in replies {
        let (text, is_verbatim) = info_text(reply)?;
        verbatim |= is_verbatim;
        for line in text.lines().filter(|l| l.starts_with("db")) {
            let (db, fields) = line.split_once(':')?;
            let field = |name: &str| -> Option<u64> {
                fields.split(',').find_map(|f| f.strip_prefix(name)?.strip_prefix('=')?.trim().parse().ok())
            };
            let (keys, expires, ttl) = (field("keys")?, field("expires")?, field("avg_ttl")?);
            let at = match dbs.iter().position(|d| d.0 == db) {
                Some(at) => at,
                None => {
                    dbs.push((db.to_string(), 0, 0, 0));
                    dbs.len() - 1
                }
            };
            let entry = &mut dbs[at];
            entry.1 += keys;
            entry.2 += expires;
            entry.3 += u128::from(ttl) * u128::from(expires);
        }
    }
    dbs.sort_by_key(|d| d.0[2..].parse::<u32>().unwrap_or(u32::MAX));
    let mut text = String::from("# Keyspace\r\n");
    for (db, keys, expires, ttl_sum) in dbs {
        let avg_ttl = ttl_sum.checked_div(u128::from(expires)).unwrap_or(0);
        text.push_str(&format!("{db}:keys={keys},expires={expires},avg_ttl={avg_ttl}\r\n"));
    }
    Some(if verbatim {
        Bytes::from(format!("={}\r\ntxt:{text}\r\n", text.len() + 4))
    } else {
        Bytes::from(format!("${}\r\n{text}\r\n", text.len()))
    })
}

/// The text of an `INFO` reply, and whether it came as RESP3's verbatim string.
fn info_text(reply: &[u8]) -> Option<(&str, bool)> {
    let header_end = memchr::memchr(b'\n', reply)?;
    let body = reply.get(header_end + 1..reply.len().checked_sub(2)?)?;
    let text = std::str::from_utf8(body).ok()?;
    match reply.first()? {
        b'$' => Some((text, false)),
        b'=' => Some((text.strip_prefix("txt:")?, true)),
        _ => None,
    }
}

/// The reply when the parts' replies are not what the command returns.
fn unexpected(replies: &[&Bytes]) -> Bytes {
    let shown: Vec<String> = replies.iter().map(|r| String::from_utf8_lossy(&r[..r.len().min(40)]).into()).collect();
    resp::error_reply(&format!("ERR redis-proxy: unexpected replies from the cluster: {shown:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Answer {
        Answer::Client { conn: crate::conn::client_and_backend_ids().0, seq: 7 }
    }

    #[test]
    fn values_come_back_in_key_order() {
        let mut fanout = Fanout::new(client(), Merge::Values, vec![vec![0, 2], vec![1, 3]]);
        assert_eq!(fanout.answered(1, Bytes::from_static(b"*2\r\n$1\r\nb\r\n$-1\r\n")), None);
        let merged = fanout.answered(0, Bytes::from_static(b"*2\r\n$1\r\na\r\n$1\r\nc\r\n"));
        assert_eq!(merged.as_deref(), Some(&b"*4\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n$-1\r\n"[..]));
    }

    #[test]
    fn counts_are_summed_and_oks_joined() {
        let mut sum = Fanout::new(client(), Merge::Sum, vec![vec![0], vec![1, 2]]);
        assert_eq!(sum.answered(0, Bytes::from_static(b":1\r\n")), None);
        assert_eq!(sum.answered(1, Bytes::from_static(b":2\r\n")).as_deref(), Some(&b":3\r\n"[..]));
        let mut ok = Fanout::new(client(), Merge::Ok, vec![vec![0], vec![1]]);
        assert_eq!(ok.answered(0, Bytes::from_static(b"+OK\r\n")), None);
        assert_eq!(ok.answered(1, Bytes::from_static(b"+OK\r\n")).as_deref(), Some(&b"+OK\r\n"[..]));
    }

    #[test]
    fn an_error_part_is_the_reply() {
        let mut fanout = Fanout::new(client(), Merge::Sum, vec![vec![0], vec![1]]);
        assert_eq!(fanout.answered(0, Bytes::from_static(b"-OOM no\r\n")), None);
        assert_eq!(fanout.answered(1, Bytes::from_static(b":1\r\n")).as_deref(), Some(&b"-OOM no\r\n"[..]));
    }

    #[test]
    fn keys_are_joined_and_randomkey_is_null_only_when_every_part_is_empty() {
        let mut keys = Fanout::new(client(), Merge::Concat, vec![vec![], vec![], vec![]]);
        assert_eq!(keys.answered(0, Bytes::from_static(b"*1\r\n$1\r\na\r\n")), None);
        assert_eq!(keys.answered(1, Bytes::from_static(b"*0\r\n")), None);
        let joined = keys.answered(2, Bytes::from_static(b"*2\r\n$1\r\nb\r\n$1\r\nc\r\n"));
        assert_eq!(joined.as_deref(), Some(&b"*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n"[..]));
        let mut empty = Fanout::new(client(), Merge::AnyKey, vec![vec![], vec![]]);
        assert_eq!(empty.answered(0, Bytes::from_static(b"$-1\r\n")), None);
        assert_eq!(empty.answered(1, Bytes::from_static(b"$-1\r\n")).as_deref(), Some(&b"$-1\r\n"[..]));
        let mut one = Fanout::new(client(), Merge::AnyKey, vec![vec![], vec![], vec![]]);
        assert_eq!(one.answered(0, Bytes::from_static(b"_\r\n")), None);
        assert_eq!(one.answered(1, Bytes::from_static(b"$3\r\nkey\r\n")), None);
        assert_eq!(one.answered(2, Bytes::from_static(b"_\r\n")).as_deref(), Some(&b"$3\r\nkey\r\n"[..]));
        let mut drawn = std::collections::BTreeSet::new();
        for i in 0..20 {
            let mut two = Fanout::new(client(), Merge::AnyKey, vec![vec![], vec![]]);
            two.answered(0, Bytes::from(format!("$2\r\na{i}\r\n")));
            drawn.insert(two.answered(1, Bytes::from(format!("$2\r\nb{i}\r\n"))).expect("complete")[4]);
        }
        assert_eq!(drawn.into_iter().collect::<Vec<u8>>(), b"ab", "both primaries' keys are drawn");
    }

    #[test]
    fn keyspace_counts_are_summed_per_database() {
        let part = |text: &str| Bytes::from(format!("${}\r\n{text}\r\n", text.len()));
        let mut info = Fanout::new(client(), Merge::Keyspace, vec![vec![], vec![], vec![]]);
        info.answered(0, part("# Keyspace\r\ndb0:keys=10,expires=2,avg_ttl=1000\r\n"));
        info.answered(1, part("# Keyspace\r\n"));
        let merged = info.answered(2, part("# Keyspace\r\ndb0:keys=5,expires=2,avg_ttl=3000\r\n"));
        assert_eq!(merged, Some(part("# Keyspace\r\ndb0:keys=15,expires=4,avg_ttl=2000\r\n")));
        let mut resp3 = Fanout::new(client(), Merge::Keyspace, vec![vec![]]);
        let text = "txt:# Keyspace\r\ndb0:keys=1,expires=0,avg_ttl=0\r\n";
        let verbatim = Bytes::from(format!("={}\r\n{text}\r\n", text.len()));
        assert_eq!(resp3.answered(0, verbatim.clone()), Some(verbatim));
    }

    #[test]
    fn malformed_parts_are_an_error_not_a_panic() {
        let mut fanout = Fanout::new(client(), Merge::Values, vec![vec![0], vec![1]]);
        assert_eq!(fanout.answered(0, Bytes::from_static(b"*2\r\n$1\r\na\r\n$1\r\nc\r\n")), None);
        let merged = fanout.answered(1, Bytes::from_static(b"+OK\r\n")).expect("complete");
        assert!(merged.starts_with(b"-ERR redis-proxy: unexpected replies"));
        let mut same = Fanout::new(client(), Merge::Same, vec![vec![], vec![]]);
        assert_eq!(same.answered(0, Bytes::from_static(b"$1\r\na\r\n")), None);
        assert!(same.answered(1, Bytes::from_static(b"$1\r\nb\r\n")).expect("complete").starts_with(b"-ERR"));
    }
}
