//! The `enforcer` command line.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Parser, Subcommand};
use enforcer::{
    agent::{
        attach,
        control::{self, Request},
    },
    commands::{detach, discover, explain, inventory, kernel_check},
    policy,
};

#[derive(Parser)]
#[command(
    version,
    about = "Kernel-enforced firewall that decides by TLS library"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Probe the TLS libraries of this host and filter the interfaces until SIGINT/SIGTERM.
    Attach(attach::AttachArgs),
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
    Discover(discover::DiscoverArgs),
}

#[derive(clap::Args)]
struct Client {
    /// The agent's operator socket.
    #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print the agent's JSON answer.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Parse and validate a policy file; print what it says.
    Check { file: PathBuf },
    /// For each TLS library on this host, the rule of FILE it hits (by line) and why.
    Explain {
        file: PathBuf,
        /// One JSON document on stdout instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            if !is_root() {
                eprintln!(
                    "hint: enforcer loads eBPF programs and changes interfaces: run it as root"
                );
            }
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Attach(args) => runtime()?.block_on(attach::run(args)),
        Command::Status { client } => ask(&client, &Request::Status, control::status_text),
        Command::Flows { client } => ask(&client, &Request::Flows, control::flows_text),
        Command::Block {
            local,
            remote,
            client,
        } => ask(&client, &Request::Block { local, remote }, |v| {
            format!("blocked; socket aborted: {}\n", v["socket_aborted"])
        }),
        Command::Unblock {
            local,
            remote,
            client,
        } => ask(&client, &Request::Unblock { local, remote }, |v| {
            format!("unblocked (was blocked: {})\n", v["was_blocked"])
        }),
        Command::Reload { client } => ask(&client, &Request::Reload, |v| {
            format!("policy reloaded: {}\n", v["reload"])
        }),
        Command::Detach { pin, ifaces } => runtime()?.block_on(detach::run(&pin, &ifaces)),
        Command::Policy {
            command: PolicyCommand::Check { file },
        } => {
            let policy = policy::load(&file)?;
            print!("{}", policy::check_report(&policy));
            Ok(())
        }
        Command::Policy {
            command: PolicyCommand::Explain { file, json },
        } => {
            let policy = policy::load(&file)?;
            let libs = inventory::discover(&policy)?;
            match json {
                true => println!("{}", explain::json(&libs, &policy)),
                false => print!("{}", explain::text(&libs, &policy)),
            }
            Ok(())
        }
        Command::Libs { policy, json } => {
            let policy = match policy {
                Some(path) => policy::load(&path)?,
                None => policy::embedded_default(),
            };
            let libs = inventory::discover(&policy)?;
            match json {
                true => println!("{}", inventory::json(&libs, &policy)),
                false => print!("{}", inventory::text(&libs, &policy)),
            }
            Ok(())
        }
        Command::CheckKernel => kernel_check::run(),
        Command::Discover(args) => discover::run(args),
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// Sends `request` to the agent; prints its answer as JSON or through `text`.
fn ask(
    client: &Client,
    request: &Request,
    text: impl Fn(&serde_json::Value) -> String,
) -> anyhow::Result<()> {
    let answer = control::request(Path::new(&client.socket), request)?;
    match client.json {
        true => println!("{answer}"),
        false => print!("{}", text(&answer)),
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::geteuid() == 0 }
}
