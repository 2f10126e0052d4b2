//! `enforcer discover --lib PATH [--companion PATH] -- COMMAND [ARGS...]`: finds the functions of
//! a library that move its TLS bytes, by probing every function of it (in chunks) while COMMAND
//! runs, and prints them with a catalog profile for them. See docs/discover.md.
//!
//! | module        | job                                                              |
//! | ------------- | ---------------------------------------------------------------- |
//! | `symbols`     | every probe-able function of an ELF file                         |
//! | `probes`      | loading the programs; `uprobe_multi` or perf-event attachment    |
//! | `workload`    | running COMMAND; SIGINT / SIGTERM                                |
//! | `scan`        | one pass: chunks, adaptive chunk size, bisecting bad functions   |
//! | `analysis`    | counters → entry points and their roles                          |
//! | `profile`     | the catalog `catalog:` section                                   |
//! | `report`      | what is printed                                                  |

mod analysis;
mod probes;
mod profile;
mod report;
mod scan;
mod symbols;
mod workload;

use std::{
    ffi::OsString,
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use enforcer_common::discover::MAX_SLOTS;

use crate::datapath::hooks::HookChoice;
pub use scan::ScanError;
use symbols::Function;
pub use workload::interrupted;

/// What `enforcer discover` was asked (its command line).
#[derive(clap::Args)]
pub struct DiscoverArgs {
    /// The library to scan.
    #[arg(long, value_name = "PATH")]
    pub lib: PathBuf,
    /// A second file whose functions are scanned too and may be probed as `in: companion`
    /// (NSS: libnspr4.so next to libssl3.so).
    #[arg(long, value_name = "PATH")]
    pub companion: Option<PathBuf>,
    /// Family id of the profile. Default: discovered-<file name stem>.
    #[arg(long)]
    pub id: Option<String>,
    /// Functions probed at once, to start with (halved while the kernel refuses).
    #[arg(long, default_value_t = 4096)]
    pub chunk: usize,
    /// Longest one run of COMMAND may take before it is killed.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub timeout: Duration,
    /// Kernel TCP hook form; `auto` takes the cheapest that works here.
    #[arg(long, value_enum, default_value = "auto")]
    pub kernel_hook: HookChoice,
    /// Also write an audit-mode policy holding the profile to FILE.
    #[arg(long, value_name = "FILE")]
    pub policy_out: Option<PathBuf>,
    /// Let COMMAND write to the terminal (default: its output is discarded).
    #[arg(long)]
    pub show_output: bool,
    /// The workload, run once per chunk.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub workload: Vec<OsString>,
}

/// A function of one of the scanned files (0: the library, 1: its companion).
pub struct ScannedFunction {
    pub file: usize,
    pub function: Function,
}

/// Everything scanned.
pub struct Scanned {
    pub files: Vec<PathBuf>,
    pub functions: Vec<ScannedFunction>,
    pub symbols: Vec<symbols::Functions>,
}

/// Runs the discovery. SIGINT / SIGTERM end it early with [`ScanError::Interrupted`], after the
/// workload is killed and every probe is removed.
pub fn run(args: DiscoverArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    workload::catch_signals();
    if args.workload.is_empty() {
        anyhow::bail!("no workload: give the command to run after --");
    }
    let mut files = vec![canonical(&args.lib)?];
    if let Some(c) = &args.companion {
        files.push(canonical(c)?);
    }
    let mut scanned = Scanned {
        files: files.clone(),
        functions: Vec::new(),
        symbols: Vec::new(),
    };
    for (i, path) in files.iter().enumerate() {
        let f = symbols::read(path)?;
        scanned
            .functions
            .extend(f.functions.iter().map(|function| ScannedFunction {
                file: i,
                function: function.clone(),
            }));
        scanned.symbols.push(f);
    }
    // Our own mapping of each file: registering a uprobe then checks its instruction at once,
    // so a function that cannot be probed fails its chunk (and is bisected out) instead of being
    // skipped silently when the workload maps the file.
    let _mappings: Vec<Mapping> = files
        .iter()
        .map(|p| Mapping::new(p))
        .collect::<Result<_, _>>()?;
    raise_fd_limit();

    let workload = workload::Workload {
        argv: args.workload.clone(),
        timeout: args.timeout,
        show_output: args.show_output,
    };
    let mut loaded = probes::load(args.kernel_hook)?;
    report::header(&scanned, &loaded, &workload);

    let mut chunk = args.chunk.clamp(1, MAX_SLOTS as usize);
    let pass = scan::Pass {
        label: "scan",
        scanned: &scanned,
        workload: &workload,
        started,
    };
    let all: Vec<usize> = (0..scanned.functions.len()).collect();
    let first = match pass.run(&mut loaded, &all, &mut chunk) {
        Ok(r) => r,
        Err(e) => return Err(stopped(e, loaded, started)),
    };
    let candidates: Vec<usize> = first
        .hits
        .iter()
        .filter(|(_, h)| h.enclosed[0] + h.enclosed[1] > 0)
        .map(|(i, _)| *i)
        .collect();
    if candidates.is_empty() {
        drop(loaded);
        let not_clean = match first.bad_runs.as_slice() {
            [] => "every run exited 0".to_string(),
            bad => format!("{} runs not clean: {}", bad.len(), bad.join(", ")),
        };
        anyhow::bail!(
            "no function of {} enclosed a kernel TCP send or receive while `{}` ran ({} chunks, {not_clean}); does the workload use this library for TLS over TCP?",
            files[0].display(),
            workload.describe(),
            first.chunks,
        );
    }
    let final_pass = scan::Pass {
        label: "final pass",
        ..pass
    };
    let last = match final_pass.run(&mut loaded, &candidates, &mut chunk) {
        Ok(r) => r,
        Err(e) => return Err(stopped(e, loaded, started)),
    };
    let hook_form = loaded.hook.form;
    let backend = loaded.backend.name();
    // Closing every link and program before saying how long it took.
    drop(loaded);
    let id = match &args.id {
        Some(id) => id.clone(),
        None => profile::default_id(
            &files[0]
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
    };
    let out = report::Report {
        scanned: &scanned,
        first: &first,
        last: &last,
        workload: &workload,
        id: &id,
        elapsed: started.elapsed(),
        hook_form: hook_form.name(),
        backend,
        single_chunk_final: last.chunks <= 1,
    };
    let text = out.render()?;
    print!("{}", text.report);
    if let Some(path) = &args.policy_out {
        std::fs::write(path, &text.policy)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!(
            "[discover] policy with the profile written to {}",
            path.display()
        );
    }
    eprintln!(
        "[discover] done in {:.1} s; every probe removed",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A scan that ended early: everything is released first, then the error says so.
fn stopped(err: ScanError, loaded: probes::Loaded, started: Instant) -> anyhow::Error {
    drop(loaded);
    anyhow::anyhow!(
        "{err} after {:.1} s; the workload was killed and every probe removed",
        started.elapsed().as_secs_f64()
    )
}

fn canonical(path: &Path) -> anyhow::Result<PathBuf> {
    std::fs::canonicalize(path).with_context(|| format!("cannot open {}", path.display()))
}

/// A read-only private mapping of a whole file, unmapped on drop.
struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(path: &Path) -> anyhow::Result<Mapping> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let len = file.metadata()?.len() as usize;
        // SAFETY: a fresh private read-only mapping that nothing in this process reads (it only
        // gives the kernel a mapping to install breakpoints in).
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len.max(1),
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            anyhow::bail!(
                "cannot map {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(Mapping {
            addr,
            len: len.max(1),
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// Perf-event uprobes take two fds per function: allow as many as the hard limit does.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
