//! The `enforcer` binary: parses the command line (`enforcer::cli`), sets up logging and runs
//! the command.

use std::{path::Path, process::ExitCode};

use clap::Parser;
use enforcer::{
    agent::{
        attach::{self, privileges},
        control::{self, Request},
        memory,
    },
    cli::{Cli, Client, Command, LogFormat, PolicyCommand},
    commands::{detach, discover, explain, inventory, kernel_check, manuals, top},
    errors, policy,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    // Checking a policy file, completions and man pages need no privilege: no hint about root.
    let privileged = !matches!(
        cli.command,
        Command::Policy {
            command: PolicyCommand::Check { .. }
        } | Command::Completions { .. }
            | Command::Man { .. }
    );
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", errors::chain_text(&err));
            // The capability check names what is missing; other commands get the hint.
            let named = err
                .downcast_ref::<privileges::MissingCapabilities>()
                .is_some();
            if privileged && !is_root() && !named {
                eprintln!(
                    "hint: enforcer loads eBPF programs and changes interfaces: run it as root"
                );
            }
            ExitCode::FAILURE
        }
    }
}

/// The agent's own log lines go to stderr, as text or as JSON lines with the same fields.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Attach(args) => {
            // Before the runtime's threads exist: arenas are per thread and stay.
            memory::tune();
            runtime()?.block_on(attach::run(args))
        }
        Command::Status { client } => ask(&client, &Request::Status, control::status_text),
        Command::Flows { client } => ask(&client, &Request::Flows, control::flows_text),
        Command::Top { control_socket } => top::run(&control_socket),
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
        Command::Cbom { socket, output } => cbom(&socket, output.as_deref()),
        Command::Reload { client } => ask(&client, &Request::Reload, |v| {
            format!("policy reloaded: {}\n", v["reload"])
        }),
        Command::Detach { pin, ifaces } => runtime()?.block_on(detach::run(&pin, &ifaces)),
        Command::Policy {
            command: PolicyCommand::Check { file, json },
        } => check_policy(&file, json),
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
        Command::Completions { shell } => {
            use std::io::Write as _;
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&manuals::completions(shell))?;
            Ok(stdout.flush()?)
        }
        Command::Man { out } => {
            for page in manuals::man_pages(&out)? {
                println!("{}", page.display());
            }
            Ok(())
        }
    }
}

/// `enforcer policy check`: the summary of a valid file, else every error (stdout with
/// `--json`, stderr without) and a failure.
fn check_policy(file: &Path, json: bool) -> anyhow::Result<()> {
    match (policy::load_all(file), json) {
        (Ok(_), true) => println!("[]"),
        (Ok(policy), false) => print!("{}", policy::check_report(&policy)),
        (Err(errors), json) => {
            match json {
                true => println!("{}", policy::errors_json(&errors)),
                false => errors.iter().for_each(|e| eprintln!("{e}")),
            }
            let n = errors.len();
            anyhow::bail!(
                "{}: {n} error{}",
                file.display(),
                if n == 1 { "" } else { "s" }
            );
        }
    }
    Ok(())
}

/// `enforcer cbom`: the agent's CBOM, indented, on stdout or into `output`.
fn cbom(socket: &Path, output: Option<&Path>) -> anyhow::Result<()> {
    let answer = control::request(socket, &Request::Cbom)?;
    let mut text = serde_json::to_string_pretty(&answer["cbom"])?;
    text.push('\n');
    match output {
        Some(path) => std::fs::write(path, text)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?,
        None => print!("{text}"),
    }
    Ok(())
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
