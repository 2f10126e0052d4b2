//! The `enforcer` command line.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Parser, Subcommand};
use enforcer::{
    attach,
    control::{self, Request},
    detach, discover, events, explain, hooks, inventory, kernel_check, loader, policy,
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
    Attach {
        /// Interface to filter (repeatable). Default: the interface of the default route.
        #[arg(long = "iface", value_name = "IFACE")]
        ifaces: Vec<String>,
        /// Policy file. Default: the embedded default policy (audit mode, allow OpenSSL).
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// Audit only: report what would be blocked, block nothing (overrides the policy's mode).
        #[arg(long)]
        dry_run: bool,
        /// Kernel TCP hook form; `auto` takes the cheapest that works here.
        #[arg(long, value_enum, default_value = "auto")]
        kernel_hook: hooks::HookChoice,
        /// Event output: text log lines on stderr, or JSON lines on stdout.
        #[arg(long, value_enum, default_value = "text")]
        events: events::EventFormat,
        /// Also append every event as a JSON line to FILE (docs/events.md).
        #[arg(long, value_name = "FILE")]
        events_file: Option<PathBuf>,
        /// Pin maps and links under DIR (on bpffs): enforcement outlives the agent, and the next
        /// agent with the same DIR takes it over (docs/operations.md).
        #[arg(long, value_name = "DIR")]
        pin: Option<PathBuf>,
        /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<SocketAddr>,
        /// The operator socket (`enforcer status`, `flows`, `block`, `unblock`, `reload`).
        #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
        control_socket: PathBuf,
        /// Capacity of the flow table (LRU).
        #[arg(long, value_name = "N", default_value_t = loader::DEFAULT_FLOWS_MAX, value_parser = clap::value_parser!(u32).range(1..))]
        flows_max: u32,
        /// Capacity of the blocklist (a full blocklist is reported, never evicted).
        #[arg(long, value_name = "N", default_value_t = loader::DEFAULT_BLOCKLIST_MAX, value_parser = clap::value_parser!(u32).range(1..))]
        blocklist_max: u32,
        /// On a policy reload, judge established flows again too (else only new ones).
        #[arg(long)]
        reevaluate_established: bool,
    },
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
        Command::Attach {
            ifaces,
            policy,
            dry_run,
            kernel_hook,
            events,
            events_file,
            pin,
            metrics,
            control_socket,
            flows_max,
            blocklist_max,
            reevaluate_established,
        } => {
            let args = attach::AttachArgs {
                ifaces,
                policy,
                dry_run,
                kernel_hook,
                events,
                events_file,
                pin,
                metrics,
                control_socket,
                flows_max,
                blocklist_max,
                reevaluate_established,
            };
            runtime()?.block_on(attach::run(args))
        }
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
