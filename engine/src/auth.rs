//! Authentication: clients at the proxy (`client_users`, checked with `AUTH` and `HELLO ... AUTH` before any
//! other command, with Redis's own error texts) and the proxy at the servers (`server_auth`: the `AUTH` every
//! backend connection starts with, and the `masterauth` a re-pointed replica needs).
//!
//! Passwords are compared as SHA-256 digests in constant time: hashing both sides gives two values of one fixed
//! length whatever was sent (so the comparison's time says nothing about the password's length or how much of
//! it matched), and a hash is also what a user configured with `password_sha256` has.

use crate::command::{CommandFlags, CommandSpec};
use crate::config::{ClientUser, Credentials, PasswordSource};
use crate::resp::Request;
use crate::session::Handling;
use bytes::Bytes;
use sha2::{Digest, Sha256};

/// Redis's reply to a command from a client that has not authenticated.
const NOAUTH: &str = "NOAUTH Authentication required.";
/// Redis's reply to a wrong user name or password.
const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";
/// Redis's reply to `HELLO` without `AUTH` from a client that has not authenticated.
const HELLO_NOAUTH: &str = "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO \
                            <proto> AUTH <user> <pass> option can be used to authenticate the client and select \
                            the RESP protocol version at the same time";

/// One client user as the check needs it: the digest of its password.
#[derive(Clone, Debug)]
struct UserEntry {
    name: String,
    /// None: its password was never resolved (a `password_file` the runtime did not read): nobody logs in as it.
    digest: Option<[u8; 32]>,
    readonly: bool,
    admin: bool,
}

/// The users clients may authenticate as; empty when client authentication is off.
#[derive(Clone, Debug, Default)]
pub(crate) struct Users {
    entries: Vec<UserEntry>,
}

impl Users {
    /// The users of `client_users`, their passwords hashed once here.
    pub(crate) fn new(users: &[ClientUser]) -> Users {
        let entries = users
            .iter()
            .map(|user| UserEntry {
                name: user.name.clone(),
                digest: match &user.password {
                    PasswordSource::Plain(secret) => Some(sha256(secret.expose())),
                    PasswordSource::Sha256(digest) => Some(*digest),
                    PasswordSource::File(_) | PasswordSource::Env(_) => None,
                },
                readonly: user.readonly,
                admin: user.admin,
            })
            .collect();
        Users { entries }
    }

    /// Whether clients must authenticate.
    pub(crate) fn required(&self) -> bool {
        !self.entries.is_empty()
    }

    /// The user `name` whose password is `password`. Every user's digest is compared, each in constant time.
    fn check(&self, name: &[u8], password: &[u8]) -> Option<&UserEntry> {
        let offered = sha256(password);
        let mut found = None;
        for entry in &self.entries {
            let matches = entry.digest.is_some_and(|digest| digests_equal(&digest, &offered));
            if matches && entry.name.as_bytes() == name {
                found = Some(entry);
            }
        }
        found
    }
}

/// What a client is allowed, as its authentication left it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ClientAuth {
    /// `anonymous` or read-only: its requests need the check (one flag, so the hot path tests one byte).
    restricted: bool,
    /// It must authenticate before anything else.
    anonymous: bool,
    /// The user it authenticated as, if it is read-only (named in the `NOPERM` reply).
    readonly_user: Option<Box<str>>,
    /// It authenticated as an admin user.
    admin: bool,
}

/// What the authentication check makes of a request.
pub(crate) enum Verdict {
    /// Nothing to do with authentication: classify it as usual.
    Pass,
    /// Answer it here.
    Handle(Handling),
    /// A `HELLO` whose `AUTH` succeeded: classify it as usual without its `AUTH user pass`.
    Rewritten(Request),
}

impl ClientAuth {
    /// A new client's standing: anonymous if `users` requires authentication.
    pub(crate) fn new(users: &Users) -> ClientAuth {
        let anonymous = users.required();
        ClientAuth { restricted: anonymous, anonymous, readonly_user: None, admin: false }
    }

    /// Whether a request of this client needs a closer look than its command name (the hot path skips it).
    #[inline]
    pub(crate) fn restricted(&self) -> bool {
        self.restricted
    }

    /// Whether it authenticated as an admin user (it may send `PROXY ...`).
    pub(crate) fn is_admin(&self) -> bool {
        self.admin
    }

    /// Checks `request` (whose command is `spec`) against the client's standing, and carries out `AUTH`, the
    /// `AUTH` of `HELLO`, and the logout of `RESET`. A client's `AUTH` never reaches a server.
    pub(crate) fn check(&mut self, users: &Users, request: &Request, spec: Option<&'static CommandSpec>) -> Verdict {
        let name = spec.map_or("", |s| s.name);
        match name {
            "auth" => return Verdict::Handle(self.auth(users, request)),
            "hello" => return self.hello(users, request),
            // RESET logs the connection out, as Redis does when the default user has a password.
            "reset" => *self = ClientAuth::new(users),
            _ => {}
        }
        let allowed_unauthenticated = spec.is_some_and(|s| s.flags.contains(CommandFlags::NO_AUTH));
        if self.anonymous && !allowed_unauthenticated {
            return Verdict::Handle(Handling::Refuse(NOAUTH.to_string()));
        }
        if let (Some(user), Some(spec)) = (&self.readonly_user, spec) {
            if spec.flags.contains(CommandFlags::WRITE) {
                let message = format!("NOPERM User {user} has no permissions to run the '{}' command", spec.name);
                return Verdict::Handle(Handling::Refuse(message));
            }
        }
        Verdict::Pass
    }

    /// `AUTH password` (the `default` user) or `AUTH user password`.
    fn auth(&mut self, users: &Users, request: &Request) -> Handling {
        let (name, password) = match (request.arg_count(), request.arg(1), request.arg(2)) {
            (2, Some(password), _) => (&b"default"[..], password),
            (3, Some(name), Some(password)) => (name, password),
            (1, ..) => return Handling::Refuse("ERR wrong number of arguments for 'auth' command".to_string()),
            _ => return Handling::Refuse("ERR syntax error".to_string()),
        };
        if !users.required() && request.arg_count() == 2 {
            // Redis's answer when the default user has no password.
            return Handling::Refuse(
                "ERR AUTH <password> called without any password configured for the default user. Are you sure \
                 your configuration is correct?"
                    .to_string(),
            );
        }
        match self.log_in(users, name, password) {
            true => Handling::Local(Bytes::from_static(b"+OK\r\n")),
            false => Handling::Refuse(WRONGPASS.to_string()),
        }
    }

    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`.
    fn hello(&mut self, users: &Users, request: &Request) -> Verdict {
        if request.arg(1).is_some_and(|version| version.eq_ignore_ascii_case(b"auth")) {
            // `HELLO AUTH user pass` lacks the version; Redis refuses it, and its password must not reach a server.
            let message = "ERR Protocol version is not an integer or out of range";
            return Verdict::Handle(Handling::Refuse(message.to_string()));
        }
        let Some(at) = hello_auth_position(request) else {
            return match self.anonymous {
                true => Verdict::Handle(Handling::Refuse(HELLO_NOAUTH.to_string())),
                false => Verdict::Pass,
            };
        };
        let (Some(name), Some(password)) = (request.arg(at + 1), request.arg(at + 2)) else {
            // Redis answers a malformed HELLO itself, but this one may carry a password: answer it here.
            return Verdict::Handle(Handling::Refuse("ERR Syntax error in HELLO option 'auth'".to_string()));
        };
        if !self.log_in(users, name, password) {
            return Verdict::Handle(Handling::Refuse(WRONGPASS.to_string()));
        }
        let kept: Vec<&[u8]> =
            request.args().enumerate().filter(|(i, _)| !(at..at + 3).contains(i)).map(|(_, arg)| arg).collect();
        Verdict::Rewritten(Request::from_args(&kept))
    }

    /// Logs in as `name` if `password` is its password; a failed attempt leaves the client as it was (as Redis).
    fn log_in(&mut self, users: &Users, name: &[u8], password: &[u8]) -> bool {
        if !users.required() {
            // Without client users everyone is the `default` user, which has no password.
            return name == b"default";
        }
        let Some(user) = users.check(name, password) else { return false };
        *self = ClientAuth {
            restricted: user.readonly,
            anonymous: false,
            readonly_user: user.readonly.then(|| user.name.clone().into_boxed_str()),
            admin: user.admin,
        };
        true
    }
}

/// Where the `AUTH` option of `HELLO protover [AUTH user pass] [SETNAME name]` is, if it has one.
fn hello_auth_position(request: &Request) -> Option<usize> {
    let mut at = 2;
    while let Some(option) = request.arg(at) {
        if option.eq_ignore_ascii_case(b"auth") {
            return Some(at);
        }
        at += if option.eq_ignore_ascii_case(b"setname") { 2 } else { 1 };
    }
    None
}

/// The `AUTH` request that logs a backend connection in with `credentials`; None while its password is unresolved.
pub(crate) fn auth_request(credentials: &Credentials) -> Option<Bytes> {
    let PasswordSource::Plain(password) = &credentials.password else { return None };
    let request = match &credentials.username {
        Some(user) => Request::from_args(&[b"AUTH".as_slice(), user.as_bytes(), password.expose()]),
        None => Request::from_args(&[b"AUTH".as_slice(), password.expose()]),
    };
    Some(request.frame().clone())
}

/// The `CONFIG SET masterauth ... [masteruser ...]` that lets a replica sync from a master with `credentials`.
pub(crate) fn masterauth_request(credentials: &Credentials) -> Option<Bytes> {
    let PasswordSource::Plain(password) = &credentials.password else { return None };
    let mut args = vec![&b"CONFIG"[..], b"SET", b"masterauth", password.expose()];
    if let Some(user) = &credentials.username {
        args.extend([&b"masteruser"[..], user.as_bytes()]);
    }
    Some(Request::from_args(&args).frame().clone())
}

/// Whether a server's reply says the proxy's connection is not (or could not be) authenticated.
pub(crate) fn is_auth_error(frame: &[u8]) -> bool {
    frame.starts_with(b"-NOAUTH") || frame.starts_with(b"-WRONGPASS") || frame.starts_with(b"-NOPERM")
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Compares two digests in time that does not depend on where they differ.
fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early-exit comparison.
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command;
    use crate::config::Secret;

    fn users() -> Users {
        let hash = sha256(b"reader-pass");
        Users::new(&[
            ClientUser {
                name: "default".into(),
                password: PasswordSource::Plain(Secret::new("s3cret")),
                readonly: false,
                admin: false,
            },
            ClientUser { name: "reader".into(), password: PasswordSource::Sha256(hash), readonly: true, admin: false },
            ClientUser {
                name: "ops".into(),
                password: PasswordSource::Plain(Secret::new("ops-pass")),
                readonly: false,
                admin: true,
            },
            ClientUser {
                name: "unread".into(),
                password: PasswordSource::File("/x".into()),
                readonly: false,
                admin: false,
            },
        ])
    }

    fn check(auth: &mut ClientAuth, users: &Users, args: &[&str]) -> Option<Handling> {
        let request = Request::from_args(args);
        match auth.check(users, &request, command::resolve(request.arg(0).unwrap(), request.arg(1))) {
            Verdict::Pass => None,
            Verdict::Handle(handling) => Some(handling),
            Verdict::Rewritten(request) => {
                Some(Handling::Local(Bytes::from(request.args().collect::<Vec<_>>().join(&b' '))))
            }
        }
    }

    fn refused(text: &str) -> Option<Handling> {
        Some(Handling::Refuse(text.to_string()))
    }

    const OK: Option<Handling> = Some(Handling::Local(Bytes::from_static(b"+OK\r\n")));

    #[test]
    fn nothing_but_auth_hello_and_quit_before_authenticating() {
        let users = users();
        let mut auth = ClientAuth::new(&users);
        assert!(auth.restricted());
        for args in [&["GET", "k"][..], &["PING"], &["SET", "k", "v"], &["PROXY", "STATUS"], &["CLIENT", "ID"]] {
            assert_eq!(check(&mut auth, &users, args), refused(NOAUTH), "{args:?}");
        }
        assert_eq!(check(&mut auth, &users, &["HELLO", "3"]), refused(HELLO_NOAUTH));
        assert_eq!(check(&mut auth, &users, &["QUIT"]), None);
        assert_eq!(check(&mut auth, &users, &["AUTH", "wrong"]), refused(WRONGPASS));
        assert_eq!(check(&mut auth, &users, &["AUTH", "reader", "s3cret"]), refused(WRONGPASS));
        assert_eq!(check(&mut auth, &users, &["AUTH", "unread", ""]), refused(WRONGPASS));
        assert_eq!(check(&mut auth, &users, &["AUTH"]), refused("ERR wrong number of arguments for 'auth' command"));
        assert_eq!(check(&mut auth, &users, &["GET", "k"]), refused(NOAUTH));
        assert_eq!(check(&mut auth, &users, &["AUTH", "s3cret"]), OK);
        assert!(!auth.restricted() && !auth.is_admin());
        assert_eq!(check(&mut auth, &users, &["SET", "k", "v"]), None);
        // A failed AUTH leaves the client logged in, as in Redis; RESET logs it out.
        assert_eq!(check(&mut auth, &users, &["AUTH", "nope"]), refused(WRONGPASS));
        assert_eq!(check(&mut auth, &users, &["GET", "k"]), None);
        assert_eq!(check(&mut auth, &users, &["RESET"]), None);
        assert_eq!(check(&mut auth, &users, &["GET", "k"]), refused(NOAUTH));
    }

    #[test]
    fn hello_auth_logs_in_and_is_forwarded_without_the_password() {
        let users = users();
        let mut auth = ClientAuth::new(&users);
        assert_eq!(check(&mut auth, &users, &["HELLO", "3", "AUTH", "ops", "bad"]), refused(WRONGPASS));
        let rewritten = check(&mut auth, &users, &["hello", "3", "auth", "ops", "ops-pass", "SETNAME", "app"]);
        assert_eq!(rewritten, Some(Handling::Local(Bytes::from_static(b"hello 3 SETNAME app"))));
        assert!(auth.is_admin() && !auth.restricted());
        assert_eq!(check(&mut auth, &users, &["HELLO", "2"]), None);
        let versionless = check(&mut auth, &users, &["HELLO", "AUTH", "ops", "ops-pass"]);
        assert_eq!(versionless, refused("ERR Protocol version is not an integer or out of range"));
    }

    #[test]
    fn read_only_users_get_noperm_for_writes() {
        let users = users();
        let mut auth = ClientAuth::new(&users);
        assert_eq!(check(&mut auth, &users, &["AUTH", "reader", "reader-pass"]), OK);
        assert_eq!(check(&mut auth, &users, &["GET", "k"]), None);
        assert_eq!(
            check(&mut auth, &users, &["SET", "k", "v"]),
            refused("NOPERM User reader has no permissions to run the 'set' command")
        );
        assert_eq!(
            check(&mut auth, &users, &["config", "set", "x", "y"]),
            None,
            "not a write: Redis would answer with its own rules"
        );
    }

    #[test]
    fn without_users_everyone_is_in_and_auth_answers_as_redis_without_a_password() {
        let users = Users::default();
        let mut auth = ClientAuth::new(&users);
        assert!(!auth.restricted());
        assert_eq!(check(&mut auth, &users, &["GET", "k"]), None);
        assert!(
            matches!(check(&mut auth, &users, &["AUTH", "x"]), Some(Handling::Refuse(e)) if e.starts_with("ERR AUTH"))
        );
        assert_eq!(check(&mut auth, &users, &["AUTH", "default", "x"]), OK);
        assert_eq!(check(&mut auth, &users, &["AUTH", "bob", "x"]), refused(WRONGPASS));
    }

    #[test]
    fn backend_requests_carry_the_credentials() {
        let with_user =
            Credentials { username: Some("proxy".into()), password: PasswordSource::Plain(Secret::new("pw")) };
        assert_eq!(&auth_request(&with_user).unwrap()[..], b"*3\r\n$4\r\nAUTH\r\n$5\r\nproxy\r\n$2\r\npw\r\n");
        assert_eq!(
            &masterauth_request(&with_user).unwrap()[..],
            &b"*6\r\n$6\r\nCONFIG\r\n$3\r\nSET\r\n$10\r\nmasterauth\r\n$2\r\npw\r\n$10\r\nmasteruser\r\n$5\r\nproxy\r\n"[..]
        );
        let unresolved = Credentials { username: None, password: PasswordSource::Env("PW".into()) };
        assert_eq!(auth_request(&unresolved), None);
        assert!(!format!("{with_user:?}").contains("pw\""), "{with_user:?}");
    }

    #[test]
    fn digests_compare_whole() {
        let a = sha256(b"a");
        let mut b = a;
        assert!(digests_equal(&a, &b));
        b[31] ^= 1;
        assert!(!digests_equal(&a, &b));
    }
}

/// The engine with credentials on both sides, on the test kit's fake clock and servers.
#[cfg(test)]
mod engine_tests {
    use crate::address::ServerAddress;
    use crate::config::{ClientUser, Credentials, PasswordSource, Secret};
    use crate::testkit::{config, connects, sent_on, Driver, FakeServer};
    use crate::{Action, Config, Event, Health};
    use bytes::Bytes;

    fn with_server_password(servers: usize, password: &str) -> Config {
        let mut config = config(servers);
        config.server_auth =
            Some(Credentials { username: None, password: PasswordSource::Plain(Secret::new(password)) });
        config
    }

    const AUTH_PW: &[u8] = b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n";

    #[test]
    fn a_server_refusing_the_credentials_is_reported_once_and_never_counted_down() {
        let mut kit = Driver::new(with_server_password(1, "wrong"));
        let mut servers = [FakeServer::master(7000).with_password("pw")];
        let mut refusals = 0;
        for _ in 0..10 {
            kit.probe_round(&mut servers);
            for event in kit.events() {
                assert!(!matches!(event, Event::ServerDown { .. }), "{event}");
                if let Event::ServerAuthRefused { reply, .. } = &event {
                    assert!(reply.starts_with("-WRONGPASS"), "{reply}");
                    assert!(event.to_string().contains("check server_auth"));
                    refusals += 1;
                }
            }
            kit.clock.advance(kit.config.check_period);
        }
        assert_eq!(refusals, 1, "said once, not at every probe");
        assert_eq!(kit.engine.master(), None, "nothing is routed to it");
        let status = kit.engine.status(kit.clock.now());
        assert_eq!(status.servers[0].health, Health::Up, "it answers: not down");
        assert!(status.servers[0].why.contains("refuses the proxy's credentials"), "{}", status.servers[0].why);
    }

    #[test]
    fn every_backend_connection_logs_in_first_and_again_after_its_reset() {
        let mut kit = Driver::new(with_server_password(1, "pw"));
        let mut servers = [FakeServer::master(7000).with_password("pw")];
        kit.probe_round(&mut servers);
        assert_eq!(kit.engine.master(), Some(&kit.config.servers[0]), "adopted once logged in");
        let client = kit.accept();
        kit.feed(client, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
        let actions = kit.drain();
        let [(shared, _)] = connects(&actions)[..] else { panic!("one shared connection: {actions:?}") };
        assert_eq!(sent_on(&actions, shared), [AUTH_PW, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"].concat());
        kit.connected(shared);
        kit.feed(shared, b"+OK\r\n$1\r\nv\r\n");
        assert_eq!(sent_on(&kit.drain(), client), b"$1\r\nv\r\n", "the AUTH reply reaches nobody");

        kit.feed(client, b"*1\r\n$5\r\nMULTI\r\n*1\r\n$4\r\nEXEC\r\n");
        let actions = kit.drain();
        let [(private, _)] = connects(&actions)[..] else { panic!("one private connection: {actions:?}") };
        assert!(sent_on(&actions, private).starts_with(AUTH_PW));
        kit.connected(private);
        kit.feed(private, b"+OK\r\n+OK\r\n*0\r\n");
        let actions = kit.drain();
        assert_eq!(sent_on(&actions, client), b"+OK\r\n*0\r\n");
        assert_eq!(sent_on(&actions, private), [&b"*1\r\n$5\r\nRESET\r\n"[..], AUTH_PW].concat(), "RESET logs out");
    }

    #[test]
    fn a_server_without_a_password_is_usable_with_server_auth_configured() {
        let mut kit = Driver::new(with_server_password(1, "pw"));
        kit.probe_round(&mut [FakeServer::master(7000)]);
        assert_eq!(kit.engine.master(), Some(&kit.config.servers[0]));
        assert!(!kit.events().iter().any(|e| matches!(e, Event::ServerAuthRefused { .. })));
    }

    #[test]
    fn a_server_entry_s_own_credentials_replace_server_auth() {
        let mut config = with_server_password(1, "wrong");
        let own = Credentials { username: None, password: PasswordSource::Plain(Secret::new("pw")) };
        config.server_auth_overrides = vec![(config.servers[0].clone(), own)];
        let mut kit = Driver::new(config);
        kit.probe_round(&mut [FakeServer::master(7000).with_password("pw")]);
        assert_eq!(kit.engine.master(), Some(&kit.config.servers[0]));
        assert!(!kit.events().iter().any(|e| matches!(e, Event::ServerAuthRefused { .. })));
    }

    #[test]
    fn a_replica_is_given_the_masters_credentials_before_it_is_pointed_at_it() {
        let mut kit = Driver::new(with_server_password(2, "pw"));
        let elsewhere = ServerAddress { host: "127.0.0.1".into(), port: 7999 };
        let mut servers = [
            FakeServer::master(7000).with_password("pw"),
            FakeServer::replica_of(7001, &elsewhere).with_password("pw"),
        ];
        kit.probe_round(&mut servers);
        kit.clock.advance(kit.config.check_period);
        kit.probe_round(&mut servers);
        assert_eq!(servers[1].masterauth.as_deref(), Some(&b"pw"[..]));
        assert_eq!(servers[1].info.replica_of.as_ref().map(|link| link.master_port), Some(7000));
    }

    #[test]
    fn clients_authenticate_at_the_proxy_and_their_auth_reaches_no_server() {
        let mut config = config(1);
        let password = PasswordSource::Plain(Secret::new("s3cret"));
        config.client_users = vec![ClientUser { name: "default".into(), password, readonly: false, admin: true }];
        let mut kit = Driver::with_master(config);
        let client = kit.accept();
        kit.feed(client, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$5\r\nPROXY\r\n*2\r\n$4\r\nAUTH\r\n$1\r\nx\r\n");
        let actions = kit.drain();
        let noauth = b"-NOAUTH Authentication required.\r\n";
        let wrongpass = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";
        assert_eq!(sent_on(&actions, client), [&noauth[..], noauth, wrongpass].concat());
        assert!(connects(&actions).is_empty(), "{actions:?}");
        kit.feed(client, b"*2\r\n$4\r\nAUTH\r\n$6\r\ns3cret\r\n*2\r\n$5\r\nPROXY\r\n$6\r\nSTATUS\r\n");
        let actions = kit.drain();
        let replies = sent_on(&actions, client);
        assert!(replies.starts_with(b"+OK\r\n$"), "an admin user may send PROXY: {:?}", Bytes::from(replies));
        assert!(connects(&actions).is_empty(), "AUTH pins nothing and reaches no server: {actions:?}");
        kit.feed(client, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
        assert!(kit.drain().iter().any(|a| matches!(a, Action::Connect { .. })), "a shared connection for GET");
    }
}
