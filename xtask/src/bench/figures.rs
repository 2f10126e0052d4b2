//! The figures: 1-6 of issue 5, 7 of issue 13 (misattribution), 8-10 of issue 14. Each returns its `Figure`s or an error meaning "something is
//! broken" (a tool did not start, a path returned the wrong verdict); slow numbers are never an
//! error.

mod app;
mod attribution;
mod churn;
mod leak;
mod loopback;
mod overflow;
pub(crate) mod packets;
mod packets_host;
mod paths;
mod startup;

pub use app::{redis, redis_steps};
pub use attribution::misattribution;
pub use churn::{churn, churn_steps};
pub use leak::leak;
pub use loopback::{loopback_steps, tls_loopback};
pub use overflow::overflow;
pub use packets::{packets, packets_steps};
pub use paths::{paths, paths_steps};
pub use startup::{startup, startup_steps};

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result};
use enforcer_tests::NetNs;

use super::{
    agent::{self, Agent},
    process::{self},
};

/// Entries of the agent's `STATS` map: the bench finds the map by this size.
const STATS_ENTRIES: u32 = enforcer_common::stat::COUNT;

/// Everything the figures share.
pub struct Ctx {
    pub quick: bool,
    pub enforcer: PathBuf,
    pub tlsperf: PathBuf,
    pub ns: NetNs,
    /// `BCC_KERNEL_SOURCE` for the BCC tools, or why there is none.
    pub bcc_src: Result<PathBuf, String>,
}

impl Ctx {
    fn runs(&self, full: usize) -> usize {
        runs(self.quick, full)
    }
    /// The agent, ready and idle: after `ready` it sweeps the host's files in the background
    /// (docs/architecture.md, "New library files"), which on 2 cores would slow whatever is
    /// measured next; wait (up to 20 s, 3 s in --quick) until it uses < 5 % of a core.
    fn agent(&self, ifaces: &[&str], policy: &str) -> Result<Agent> {
        self.agent_with(ifaces, policy, &[])
    }
    fn agent_with(&self, ifaces: &[&str], policy: &str, extra: &[&str]) -> Result<Agent> {
        let a = Agent::start_with(&self.enforcer, ifaces, policy, extra)?;
        let max = Duration::from_secs(if self.quick { 3 } else { 20 });
        agent::wait_idle(a.pid(), max);
        Ok(a)
    }
    /// Waits for other sessions' agents to go before a block (not in --quick: its numbers do
    /// not matter).
    fn quiesce(&self) {
        if !self.quick {
            agent::quiesce(QUIESCE);
        }
    }
    fn tlsperf(&self) -> Command {
        Command::new(&self.tlsperf)
    }
}

/// Runs (or rounds) of a measurement: `full`, or 1 in --quick.
fn runs(quick: bool, full: usize) -> usize {
    if quick { 1 } else { full }
}

const LOOPBACK: &str = "127.0.0.1";
/// How long a measurement block waits for other sessions' agents to go.
const QUIESCE: Duration = Duration::from_secs(60);

fn f(v: &serde_json::Value, key: &str) -> Result<f64> {
    v[key]
        .as_f64()
        .with_context(|| format!("no number {key:?} in {v}"))
}

/// What traps cost here: explains figures 1 and 2.
pub fn calibrate(tlsperf: &Path) -> Result<(f64, f64)> {
    let v = process::run_json(Command::new(tlsperf).arg("calib"), Duration::from_secs(60))?;
    Ok((f(&v, "syscall_ns")?, f(&v, "int3_sigtrap_ns")?))
}
