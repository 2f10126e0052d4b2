//! The `enforcer` command line: every subcommand and its arguments, as clap parses them. The
//! binary (`main.rs`) parses these and hands each command to the module that runs it; the
//! library keeps them so that tests can parse the command lines the documentation shows
//! (`enforcer/tests/docs.rs`).

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand};

use crate::{agent::attach::AttachArgs, agent::control, commands::discover::DiscoverArgs};

#[derive(Parser)]
#[command(
    version,
    about = "Kernel-enforced firewall that decides by TLS library"
)]
pub struct Cli {
    /// The format of enforcer's own log lines on stderr: `text` for people, `json` (one object
    /// a line, the same fields as the text) for log pipelines.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Probe the TLS libraries of this host and filter the interfaces until SIGINT/SIGTERM.
    Attach(AttachArgs),
    /// A running agent: what is attached, the kernel hook form, the counters.
    Status {
        #[command(flatten)]
        client: Client,
    },
    /// A running agent's attributed connections, with library and verdict.
    Flows {
        #[command(flatten)]
        client: Client,
    },
    /// A live view of a running agent: connections per library and verdict per second, the
    /// newest violations, drops, ring-buffer losses. Redraws every second and on a key; `q` quits.
    Top {
        /// The agent's control socket (`attach --control-socket`).
        #[arg(long, alias = "socket", value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
        control_socket: PathBuf,
    },
    /// Block one connection now (blocklist + socket abort), by this host's end and the peer's.
    Block {
        /// This host's end, e.g. 10.0.0.1:40000 or [fd00::1]:40000.
        local: SocketAddr,
        /// The peer's end.
        remote: SocketAddr,
        #[command(flatten)]
        client: Client,
    },
    /// Take one connection out of the blocklist; it stays allowed.
    Unblock {
        local: SocketAddr,
        remote: SocketAddr,
        #[command(flatten)]
        client: Client,
    },
    /// A running agent's CycloneDX 1.7 CBOM of this host's live TLS use (JSON).
    ///
    /// The TLS libraries probed (version, build-id, SHA-256), the TLS versions, cipher suites
    /// and key-exchange groups their connections negotiated since the agent started, and the
    /// processes that made them (docs/cbom.md).
    Cbom {
        /// The agent's operator socket.
        #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Write the CBOM to FILE instead of stdout.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Make a running agent reload its policy file now (as SIGHUP does); prints the outcome.
    Reload {
        #[command(flatten)]
        client: Client,
    },
    /// Remove what an agent run with `--pin DIR` left in force (run after stopping it).
    Detach {
        #[arg(long, value_name = "DIR")]
        pin: PathBuf,
        /// Also remove our tc filter from this interface (repeatable).
        #[arg(long = "iface", value_name = "IFACE")]
        ifaces: Vec<String>,
    },
    /// Policy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Which kernel TCP hook forms load and attach on this kernel, and why not.
    CheckKernel,
    /// Every TLS library file on this host: family, version, build-id, SHA-256, processes, verdict.
    Libs {
        /// Policy that gives the verdicts (and may extend the catalog). Default: the embedded one.
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// One JSON document on stdout instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Find the TLS read, write and handshake functions of a library by probing all of its
    /// functions while COMMAND runs; print them and a catalog profile (docs/discover.md).
    Discover(DiscoverArgs),
    /// Print the shell completion script for SHELL (bash: `source <(enforcer completions bash)`,
    /// or install it as /usr/share/bash-completion/completions/enforcer).
    Completions {
        #[arg(value_enum, value_name = "SHELL")]
        shell: Shell,
    },
    /// Write the man pages (enforcer.1 and one per subcommand, enforcer-attach.1, ...) into DIR.
    Man {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// The shells `enforcer completions` writes for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(clap::Args)]
pub struct Client {
    /// The agent's operator socket.
    #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print the agent's JSON answer.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Parse and validate a policy file; print what it says, or every error it has (each with
    /// line, column and key, by position) and exit non-zero.
    Check {
        file: PathBuf,
        /// Print a JSON array of the errors (`[]` for a valid file) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// For each TLS library on this host, the rule of FILE it hits (by line) and why.
    Explain {
        file: PathBuf,
        /// One JSON document on stdout instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// clap's own consistency checks (conflicting names, bad defaults) over every subcommand.
    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
