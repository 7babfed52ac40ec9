//! The admin targets' part of the harness: the admin client's `PROXY` commands and the reloads.

use super::Harness;
use crate::fuzzing::input::{reload_config, Op, UNIVERSE};

impl Harness {
    /// Runs an admin operation: a `PROXY` command from the admin client, or a reload.
    pub(super) fn admin_op(&mut self, op: Op) {
        match op {
            Op::AdminAdd { server } | Op::AdminRemove { server } => {
                let address = self.universe[usize::from(server) % UNIVERSE].to_string();
                let verb = if matches!(op, Op::AdminAdd { .. }) { "ADD" } else { "REMOVE" };
                let admin = self.admin_client();
                self.send_words(admin, &["PROXY", verb, &address]);
            }
            Op::AdminFailover { server } => {
                let address = self.universe[usize::from(server) % UNIVERSE].to_string();
                let admin = self.admin_client();
                if server >= 0x80 {
                    self.send_words(admin, &["PROXY", "FAILOVER"]);
                } else {
                    self.send_words(admin, &["PROXY", "FAILOVER", &address]);
                }
            }
            Op::Reload { mask, rotate, flip_mode } => {
                let universe: Vec<String> = self.universe.iter().map(ToString::to_string).collect();
                let reads_to_slaves = self.reads_to_slaves != flip_mode;
                let config = reload_config(&universe, mask, rotate, reads_to_slaves, self.sentinel_json.as_deref());
                let now = self.driver.clock.now();
                // A refusal (it would remove the master, or a server still draining) changes nothing.
                if self.driver.engine.reconfigure(now, config).is_ok() {
                    self.reads_to_slaves = reads_to_slaves;
                }
                self.drain();
            }
            Op::AdminQuery { which } => {
                let verb = ["STATUS", "SERVERS", "RELOAD"][usize::from(which) % 3];
                let admin = self.admin_client();
                self.send_words(admin, &["PROXY", verb]);
            }
            _ => {}
        }
    }

    /// The admin client, connected on the admin listener at first use (again if the engine closed it).
    fn admin_client(&mut self) -> usize {
        if let Some(i) = self.admin.filter(|&i| self.clients[i].open) {
            return i;
        }
        let now = self.driver.clock.now();
        let id = self.driver.engine.accept_admin(now, "127.0.0.1:1".parse().expect("an address"));
        let i = self.add_client(id);
        self.admin = Some(i);
        self.drain();
        i
    }
}
