//! Cluster mode's subscriptions: the channels and patterns each subscribed client asked for, kept so that when
//! the node carrying its subscriber connection is lost, the proxy subscribes it again on another primary (a
//! cluster delivers every `PUBLISH` to every node) and the client stays subscribed. The server's confirmations of
//! that second subscription are the proxy's, not the client's: it already had them.

use crate::conn::ConnId;
use crate::resp::Request;
use bytes::Bytes;
use std::collections::{BTreeSet, HashMap};

/// One client's subscriptions.
#[derive(Debug, Default)]
struct Subscribed {
    channels: BTreeSet<Bytes>,
    patterns: BTreeSet<Bytes>,
}

/// What subscribing a client again on another node takes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Resubscribe {
    /// `SUBSCRIBE` and `PSUBSCRIBE` of everything it is subscribed to.
    pub(crate) data: Bytes,
    /// The confirmations the server sends back (one per channel or pattern): not for the client.
    pub(crate) confirmations: usize,
}

/// The subscriptions of the subscribed clients.
#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    by_client: HashMap<ConnId, Subscribed>,
}

impl Subscriptions {
    /// `request` of `client` goes to its subscriber connection: a (un)subscription changes what it follows.
    pub(crate) fn sent(&mut self, client: ConnId, request: &Request) {
        let Some(name) = request.arg(0).map(<[u8]>::to_ascii_lowercase) else { return };
        let names = request.args().skip(1).map(Bytes::copy_from_slice);
        let subscribed = self.by_client.entry(client).or_default();
        match name.as_slice() {
            b"subscribe" => subscribed.channels.extend(names),
            b"psubscribe" => subscribed.patterns.extend(names),
            b"unsubscribe" if request.arg_count() == 1 => subscribed.channels.clear(),
            b"punsubscribe" if request.arg_count() == 1 => subscribed.patterns.clear(),
            b"unsubscribe" => {
                for name in names {
                    subscribed.channels.remove(&name);
                }
            }
            b"punsubscribe" => {
                for name in names {
                    subscribed.patterns.remove(&name);
                }
            }
            _ => {}
        }
    }

    /// What subscribes `client` again elsewhere (None: it follows nothing).
    pub(crate) fn resubscribe(&self, client: ConnId) -> Option<Resubscribe> {
        let subscribed = self.by_client.get(&client)?;
        let mut data = Vec::new();
        for (command, names) in [("SUBSCRIBE", &subscribed.channels), ("PSUBSCRIBE", &subscribed.patterns)] {
            if !names.is_empty() {
                let mut args: Vec<&[u8]> = vec![command.as_bytes()];
                args.extend(names.iter().map(|n| n.as_ref()));
                data.extend_from_slice(Request::from_args(&args).frame());
            }
        }
        let confirmations = subscribed.channels.len() + subscribed.patterns.len();
        (confirmations > 0).then(|| Resubscribe { data: Bytes::from(data), confirmations })
    }

    /// Forgets the clients that are gone (`connected` says which remain).
    pub(crate) fn retain_clients(&mut self, mut connected: impl FnMut(ConnId) -> bool) {
        if !self.by_client.is_empty() {
            self.by_client.retain(|client, _| connected(*client));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::{ConnTable, Lane};

    fn request(args: &[&str]) -> Request {
        Request::from_args(args)
    }

    #[test]
    fn what_a_client_follows_is_subscribed_again_in_one_go() {
        let client = ConnTable::new(Lane::Client).insert(());
        let mut subscriptions = Subscriptions::default();
        assert_eq!(subscriptions.resubscribe(client), None);
        subscriptions.sent(client, &request(&["SUBSCRIBE", "a", "b", "c"]));
        subscriptions.sent(client, &request(&["psubscribe", "news.*"]));
        subscriptions.sent(client, &request(&["UNSUBSCRIBE", "b"]));
        subscriptions.sent(client, &request(&["PING"]));
        let again = subscriptions.resubscribe(client).expect("subscribed");
        assert_eq!(again.confirmations, 3);
        let expected =
            [&request(&["SUBSCRIBE", "a", "c"]).frame()[..], &request(&["PSUBSCRIBE", "news.*"]).frame()[..]].concat();
        assert_eq!(&again.data[..], &expected[..]);
        subscriptions.sent(client, &request(&["UNSUBSCRIBE"]));
        subscriptions.sent(client, &request(&["PUNSUBSCRIBE"]));
        assert_eq!(subscriptions.resubscribe(client), None, "it follows nothing any more");
        subscriptions.retain_clients(|_| false);
        assert!(subscriptions.by_client.is_empty());
    }
}
