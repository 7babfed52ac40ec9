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
