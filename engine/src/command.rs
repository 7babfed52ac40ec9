//! The Redis command table: every command and subcommand of Redis 7 with its arity, flags and key positions.
//!
//! The data lives in the generated child module `table` (`engine/src/command/table.rs`), produced from the
//! `COMMAND` reply of a live server. To regenerate it (needs `redis-server` on `PATH`, Python 3.11+), from the
//! workspace root:
//!
//! ```text
//! python3 tools/gen-command-table.py          # rewrite engine/src/command/table.rs
//! python3 tools/gen-command-table.py --check  # only verify it is current
//! ```
//!
//! The end-to-end test `tests/tests/command_table.rs` compares the checked-in table with whatever
//! `redis-server` is installed and fails on any drift.
//!
//! Lookups ([`lookup`], [`CommandSpec::subcommand`], [`resolve`]) are case-insensitive and allocation-free: a
//! top-level command is found through a generated hash index (FNV-1a of the lowercased name, open addressing), a
//! subcommand by binary search of its container's sorted list after lowercasing into a stack buffer.

mod table;

/// Static description of one Redis command or subcommand.
#[derive(Debug, PartialEq, Eq)]
pub struct CommandSpec {
    /// Lowercase name; subcommands are named `"container|sub"` (e.g. `"config|get"`) as Redis 7 reports them.
    pub name: &'static str,
    /// Arity as Redis reports it, counting the name: `n` means exactly `n` arguments, `-n` at least `n`.
    /// For a subcommand the count includes both the container and the subcommand name.
    pub arity: i32,
    /// The command's flags.
    pub flags: CommandFlags,
    /// Index of the first key argument (legacy `COMMAND` key spec); 0 when the command has no fixed keys.
    pub first_key: i32,
    /// Index of the last key argument; negative counts from the end (`-1` is the last argument).
    pub last_key: i32,
    /// Distance between key arguments (e.g. 2 for `MSET key value key value`).
    pub key_step: i32,
    /// Subcommands, sorted by name for binary search; empty for plain commands.
    pub subcommands: &'static [CommandSpec],
}

/// A set of command flags, as reported in the flags field of Redis 7's `COMMAND` reply.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct CommandFlags(u32);

macro_rules! command_flags {
    ($($(#[$doc:meta])* $name:ident = $bit:expr, $redis:literal;)*) => {
        impl CommandFlags {
            /// No flags at all.
            pub const EMPTY: CommandFlags = CommandFlags(0);
            $($(#[$doc])* pub const $name: CommandFlags = CommandFlags(1 << $bit);)*

            /// Every flag with its Redis spelling, in bit order.
            const NAMED: &'static [(CommandFlags, &'static str)] = &[$((CommandFlags::$name, $redis)),*];
        }
    };
}

command_flags! {
    /// `write`: may modify the dataset.
    WRITE = 0, "write";
    /// `readonly`: only reads keys.
    READONLY = 1, "readonly";
    /// `denyoom`: may grow memory use; refused when over `maxmemory`.
    DENYOOM = 2, "denyoom";
    /// `module`: implemented by a module.
    MODULE = 3, "module";
    /// `admin`: administrative command.
    ADMIN = 4, "admin";
    /// `pubsub`: publish/subscribe command.
    PUBSUB = 5, "pubsub";
    /// `noscript`: not allowed in scripts.
    NOSCRIPT = 6, "noscript";
    /// `blocking`: may block the client.
    BLOCKING = 7, "blocking";
    /// `loading`: allowed while the dataset is loading.
    LOADING = 8, "loading";
    /// `stale`: allowed on a replica with stale data.
    STALE = 9, "stale";
    /// `skip_monitor`: not shown in MONITOR.
    SKIP_MONITOR = 10, "skip_monitor";
    /// `skip_slowlog`: not logged in the slow log.
    SKIP_SLOWLOG = 11, "skip_slowlog";
    /// `asking`: cluster: allowed on an importing slot after ASKING.
    ASKING = 12, "asking";
    /// `fast`: O(1) or O(log N), never delays the server.
    FAST = 13, "fast";
    /// `no_auth`: allowed before authentication.
    NO_AUTH = 14, "no_auth";
    /// `may_replicate`: may generate replication traffic.
    MAY_REPLICATE = 15, "may_replicate";
    /// `sentinel`: available in Sentinel mode.
    SENTINEL = 16, "sentinel";
    /// `only_sentinel`: available only in Sentinel mode.
    ONLY_SENTINEL = 17, "only_sentinel";
    /// `no_mandatory_keys`: may take no keys although it has key arguments.
    NO_MANDATORY_KEYS = 18, "no_mandatory_keys";
    /// `protected`: disabled unless enabled in the config (e.g. DEBUG, MODULE).
    PROTECTED = 19, "protected";
    /// `module_no_cluster`: module command refused in cluster mode.
    MODULE_NO_CLUSTER = 20, "module_no_cluster";
    /// `no_async_loading`: refused during asynchronous loading.
    NO_ASYNC_LOADING = 21, "no_async_loading";
    /// `no_multi`: not allowed inside MULTI.
    NO_MULTI = 22, "no_multi";
    /// `movablekeys`: key positions depend on the arguments; the legacy first/last/step spec is incomplete.
    MOVABLE_KEYS = 23, "movablekeys";
    /// `allow_busy`: allowed while a script or function is busy.
    ALLOW_BUSY = 24, "allow_busy";
}

impl CommandFlags {
    /// Whether every flag of `other` is set in `self`.
    #[inline]
    pub const fn contains(self, other: CommandFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether `self` and `other` share at least one flag.
    #[inline]
    pub const fn intersects(self, other: CommandFlags) -> bool {
        self.0 & other.0 != 0
    }

    /// The flags set in either `self` or `other`.
    #[inline]
    #[must_use]
    pub const fn union(self, other: CommandFlags) -> CommandFlags {
        CommandFlags(self.0 | other.0)
    }

    /// Whether no flag is set.
    #[inline]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The raw bit set.
    #[inline]
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// The Redis spellings of the flags set (e.g. `"readonly"`, `"movablekeys"`), in bit order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::NAMED.iter().filter(move |(flag, _)| self.contains(*flag)).map(|(_, name)| *name)
    }

    /// The flag with the given Redis spelling (exact, lowercase), if it is known.
    pub fn from_name(name: &str) -> Option<CommandFlags> {
        Self::NAMED.iter().find(|(_, n)| *n == name).map(|(flag, _)| *flag)
    }
}

impl std::ops::BitOr for CommandFlags {
    type Output = CommandFlags;

    fn bitor(self, rhs: CommandFlags) -> CommandFlags {
        self.union(rhs)
    }
}

/// ASCII-lowercases `name` into `buf`, or `None` when it is longer than any name in the table.
#[inline]
fn lowercase<'b>(name: &[u8], buf: &'b mut [u8; table::MAX_NAME_LEN]) -> Option<&'b [u8]> {
    let out = buf.get_mut(..name.len())?;
    for (o, &b) in out.iter_mut().zip(name) {
        *o = b.to_ascii_lowercase();
    }
    Some(out)
}

/// Binary search of `specs` (sorted by name) for the lowercase `name`, skipping the first `skip` bytes of each
/// table name (the `"container|"` prefix of subcommands).
#[inline]
fn search(specs: &'static [CommandSpec], skip: usize, name: &[u8]) -> Option<&'static CommandSpec> {
    specs.binary_search_by(|spec| spec.name.as_bytes()[skip..].cmp(name)).ok().map(|i| &specs[i])
}

/// 32-bit FNV-1a of the ASCII-lowercased `name` (the generator hashes the same way to build the index).
#[inline]
fn fnv1a_lowercase(name: &[u8]) -> u32 {
    name.iter().fold(0x811C_9DC5, |h, &b| (h ^ u32::from(b.to_ascii_lowercase())).wrapping_mul(0x0100_0193))
}

/// Looks up a top-level command by name, ASCII-case-insensitively (`GET`, `get` and `GeT` all match).
///
/// Allocation-free: FNV-1a of the lowercased bytes picks a slot of a generated open-addressing index (1024
/// slots for ~240 commands, about 1.1 probes on average), and each candidate is checked by length and
/// `eq_ignore_ascii_case`. Names longer than any command fail at once. Subcommand names such as `"config|get"`
/// are not found here (use [`resolve`] or [`CommandSpec::subcommand`]).
#[inline]
pub fn lookup(name: &[u8]) -> Option<&'static CommandSpec> {
    if name.len() > table::MAX_NAME_LEN {
        return None;
    }
    let mask = table::HASH_SLOTS.len() - 1;
    let mut slot = (fnv1a_lowercase(name) >> (32 - table::HASH_BITS)) as usize;
    loop {
        // The index is at most half full, so an empty slot ends every probe sequence.
        let entry = usize::from(table::HASH_SLOTS[slot]);
        let spec = table::COMMANDS.get(entry.checked_sub(1)?)?;
        if spec.name.len() == name.len() && spec.name.as_bytes().eq_ignore_ascii_case(name) {
            return Some(spec);
        }
        slot = (slot + 1) & mask;
    }
}

/// Resolves a request from its first two arguments: the command, then its subcommand when the command has
/// subcommands and `args1` is given. Falls back to the container command when the subcommand is unknown
/// (Redis then answers with its own error). Same as [`CommandSpec::resolve`].
// Always inlined: with a second (cold) caller, the upload path, it was no longer inlined into the request path,
// which cost 11 instructions per round trip (bench/instructions.sh).
#[inline(always)]
pub fn resolve(args0: &[u8], args1: Option<&[u8]>) -> Option<&'static CommandSpec> {
    let command = lookup(args0)?;
    match args1 {
        Some(sub) if !command.subcommands.is_empty() => Some(command.subcommand(sub).unwrap_or(command)),
        _ => Some(command),
    }
}

/// Every top-level command, sorted by name; subcommands hang off their container.
pub fn all() -> &'static [CommandSpec] {
    table::COMMANDS
}

/// The version of Redis the checked-in table was generated from (e.g. `"7.0.15"`).
pub fn redis_version() -> &'static str {
    table::REDIS_VERSION
}

impl CommandSpec {
    /// Looks up a subcommand of this container command by its bare name (`b"get"` for `config|get`),
    /// ASCII-case-insensitively and without allocating.
    #[inline]
    pub fn subcommand(&self, name: &[u8]) -> Option<&'static CommandSpec> {
        if self.subcommands.is_empty() {
            return None;
        }
        let mut buf = [0u8; table::MAX_NAME_LEN];
        search(self.subcommands, self.name.len() + 1, lowercase(name, &mut buf)?)
    }

    /// Resolves a request from its first two arguments; see the free function [`resolve`].
    #[inline]
    pub fn resolve(args0: &[u8], args1: Option<&[u8]>) -> Option<&'static CommandSpec> {
        resolve(args0, args1)
    }

    /// Whether this command is a subcommand (its name contains `|`).
    pub fn is_subcommand(&self) -> bool {
        self.name.contains('|')
    }

    /// Whether a request with `argc` arguments (counting the command name, and for subcommands the
    /// subcommand name too) satisfies the arity.
    #[inline]
    pub fn accepts_arg_count(&self, argc: usize) -> bool {
        let arity = self.arity.unsigned_abs() as usize;
        if self.arity < 0 {
            argc >= arity
        } else {
            argc == arity
        }
    }

    /// Indexes (into the request's arguments, 0 being the command name) of the key arguments of a request with
    /// `argc` arguments, from the legacy `first_key`/`last_key`/`key_step` spec. Indexes are always `< argc`.
    ///
    /// For commands with [`CommandFlags::MOVABLE_KEYS`] (EVAL, ZUNIONSTORE, XREAD, SORT, MIGRATE, ...) this is only
    /// the legacy spec, which may be empty (EVAL: keys follow `numkeys`) or incomplete; such commands need
    /// argument-aware key extraction.
    pub fn key_indexes(&self, argc: usize) -> impl Iterator<Item = usize> {
        let (first, last, step) = self.key_range(argc).unwrap_or((1, 0, 1));
        (first..=last).step_by(step)
    }

    /// First and last key index (inclusive, clamped below `argc`) and step, or `None` when there are no keys.
    fn key_range(&self, argc: usize) -> Option<(usize, usize, usize)> {
        if self.first_key <= 0 || self.key_step <= 0 {
            return None;
        }
        let last = if self.last_key < 0 {
            argc.checked_sub(self.last_key.unsigned_abs() as usize)?
        } else {
            self.last_key as usize
        };
        let last = last.min(argc.checked_sub(1)?);
        Some((self.first_key as usize, last, self.key_step as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(name: &str) -> &'static CommandSpec {
        lookup(name.as_bytes()).unwrap_or_else(|| panic!("{name} is in the table"))
    }

    fn keys(name: &str, argc: usize) -> Vec<usize> {
        get(name).key_indexes(argc).collect()
    }

    #[test]
    fn lookup_is_case_insensitive() {
        let spec = get("get");
        assert_eq!(spec.name, "get");
        for name in ["GET", "get", "GeT", "gEt"] {
            assert!(std::ptr::eq(lookup(name.as_bytes()).unwrap(), spec), "{name}");
        }
        assert_eq!(lookup(b"CLIENT").unwrap().name, "client");
        assert_eq!(lookup(b"Restore-Asking").unwrap().name, "restore-asking");
    }

    #[test]
    fn unknown_names() {
        for name in [&b""[..], b"ge", b"gett", b"nosuchcommand", b"config|get", b"CONFIG|GET", b"get\0", b"\xff"] {
            assert!(lookup(name).is_none(), "{name:?}");
        }
        assert!(get("config").subcommand(b"nosuch").is_none());
        assert!(get("get").subcommand(b"get").is_none());
        assert!(resolve(b"nosuch", Some(b"get")).is_none());
    }

    #[test]
    fn subcommand_resolution() {
        assert_eq!(resolve(b"CONFIG", Some(b"GET")).unwrap().name, "config|get");
        assert_eq!(resolve(b"client", Some(b"list")).unwrap().name, "client|list");
        assert_eq!(resolve(b"OBJECT", Some(b"encoding")).unwrap().name, "object|encoding");
        assert_eq!(CommandSpec::resolve(b"xinfo", Some(b"Stream")).unwrap().name, "xinfo|stream");
        assert_eq!(get("config").subcommand(b"set").unwrap().name, "config|set");
        // Unknown subcommand or none given: the container.
        assert_eq!(resolve(b"config", Some(b"nosuch")).unwrap().name, "config");
        assert_eq!(resolve(b"config", None).unwrap().name, "config");
        // A command without subcommands ignores its first argument.
        assert_eq!(resolve(b"get", Some(b"list")).unwrap().name, "get");
        assert!(get("config|get".split('|').next().unwrap()).subcommand(b"GET").unwrap().is_subcommand());
    }

    #[test]
    fn table_is_sorted_and_consistent() {
        assert!(all().len() > 200, "Redis 7 has over 200 commands");
        assert!(all().windows(2).all(|w| w[0].name < w[1].name));
        for spec in all() {
            assert_eq!(spec.name, spec.name.to_ascii_lowercase());
            assert!(!spec.name.contains('|'));
            assert!(spec.subcommands.windows(2).all(|w| w[0].name < w[1].name), "{}", spec.name);
            for sub in spec.subcommands {
                let (container, bare) = sub.name.split_once('|').expect("subcommand name has a |");
                assert_eq!(container, spec.name);
                assert!(sub.subcommands.is_empty());
                assert!(std::ptr::eq(resolve(container.as_bytes(), Some(bare.as_bytes())).unwrap(), sub));
                assert!(std::ptr::eq(
                    resolve(&container.to_uppercase().into_bytes(), Some(bare.to_uppercase().as_bytes())).unwrap(),
                    sub
                ));
            }
            assert!(std::ptr::eq(lookup(spec.name.as_bytes()).unwrap(), spec));
            assert!(std::ptr::eq(lookup(spec.name.to_uppercase().as_bytes()).unwrap(), spec));
        }
        assert!(redis_version().starts_with('7'));
    }

    #[test]
    fn arity() {
        let get_ = get("get");
        assert_eq!(get_.arity, 2);
        assert!(get_.accepts_arg_count(2));
        assert!(!get_.accepts_arg_count(1));
        assert!(!get_.accepts_arg_count(3));
        let mset = get("mset");
        assert_eq!(mset.arity, -3);
        assert!(!mset.accepts_arg_count(2));
        assert!(mset.accepts_arg_count(3));
        assert!(mset.accepts_arg_count(5));
        let config_get = resolve(b"config", Some(b"get")).unwrap();
        assert!(config_get.accepts_arg_count(3));
        assert!(!config_get.accepts_arg_count(2));
    }

    #[test]
    fn key_indexes() {
        assert_eq!(keys("get", 2), [1]);
        assert_eq!(keys("get", 1), Vec::<usize>::new());
        assert_eq!(keys("mget", 4), [1, 2, 3]);
        assert_eq!(keys("mset", 5), [1, 3]);
        assert_eq!(keys("mset", 7), [1, 3, 5]);
        assert_eq!(keys("set", 5), [1]);
        assert_eq!(keys("ping", 1), Vec::<usize>::new());
        // BLPOP key [key ...] timeout: last key is the one before the timeout.
        assert_eq!(keys("blpop", 4), [1, 2]);
        assert_eq!(keys("blpop", 1), Vec::<usize>::new());
        // EVAL script numkeys key... arg...: movable keys, the legacy spec has none.
        let eval = get("eval");
        assert!(eval.flags.contains(CommandFlags::MOVABLE_KEYS));
        assert_eq!(keys("eval", 5), Vec::<usize>::new());
        for spec in all() {
            for argc in 0..10 {
                assert!(spec.key_indexes(argc).all(|i| i < argc && i > 0), "{}", spec.name);
            }
        }
    }

    #[test]
    fn flags_of_known_commands() {
        use CommandFlags as F;
        let flags = |name: &str| get(name).flags;
        assert!(flags("get").contains(F::READONLY.union(F::FAST)));
        assert!(!flags("get").intersects(F::WRITE));
        assert!(flags("set").contains(F::WRITE | F::DENYOOM));
        assert!(flags("blpop").contains(F::BLOCKING | F::WRITE));
        assert!(flags("subscribe").contains(F::PUBSUB));
        assert!(resolve(b"config", Some(b"set")).unwrap().flags.contains(F::ADMIN));
        assert!(!flags("get").contains(F::ADMIN));
        assert_eq!(flags("get").names().collect::<Vec<_>>(), ["readonly", "fast"]);
        assert_eq!(F::EMPTY.names().count(), 0);
        assert!(F::EMPTY.is_empty());
    }

    /// The obvious, slow lookup the hash index must agree with.
    fn linear_lookup(name: &[u8]) -> Option<&'static CommandSpec> {
        all().iter().find(|spec| spec.name.as_bytes().eq_ignore_ascii_case(name))
    }

    proptest::proptest! {
        #[test]
        fn lookup_agrees_with_linear_search(name in proptest::collection::vec(proptest::num::u8::ANY, 0..24)) {
            proptest::prop_assert_eq!(lookup(&name).map(|s| s.name), linear_lookup(&name).map(|s| s.name));
        }

        #[test]
        fn lookup_finds_mixed_case_names(index in 0..240usize, case_mask in proptest::num::u32::ANY) {
            let spec = &all()[index % all().len()];
            let name: Vec<u8> = spec.name.bytes().enumerate()
                .map(|(i, b)| if case_mask >> (i % 32) & 1 == 1 { b.to_ascii_uppercase() } else { b })
                .collect();
            proptest::prop_assert!(std::ptr::eq(lookup(&name).unwrap(), spec));
        }
    }

    #[test]
    fn flag_names_round_trip() {
        let mut all_flags = CommandFlags::EMPTY;
        for &(flag, name) in CommandFlags::NAMED {
            assert_eq!(flag.bits().count_ones(), 1);
            assert_eq!(CommandFlags::from_name(name), Some(flag));
            assert_eq!(flag.names().collect::<Vec<_>>(), [name]);
            assert!(!all_flags.intersects(flag), "{name} reuses a bit");
            all_flags = all_flags | flag;
        }
        assert_eq!(all_flags.names().count(), 25);
        assert_eq!(CommandFlags::from_name("READONLY"), None);
    }
}
