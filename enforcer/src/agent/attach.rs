//! `enforcer attach`: load, attach everything, report until a signal, then detach everything
//! (with `--pin`: leave the pinned state in force, see `pin`).
//!
//! Rollback: every piece is owned by something that undoes it. Uprobes, the kernel hook, the
//! tracepoints and XDP are aya links owned by the `Ebpf` object (detached when it drops, and by
//! the kernel if the process dies); the tc filters are netlink objects and are removed
//! explicitly, on success, error and signal alike.

use std::{
    collections::HashMap,
    net::SocketAddr,
    os::fd::AsFd,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::{Context, Result, bail};
use aya::{
    Btf, Ebpf,
    maps::{MapData, RingBuf},
    programs::{
        SchedClassifier, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use enforcer_common::maps;
use tracing::{error, info, warn};

use crate::{
    agent::{
        control,
        events::{EventFormat, LibInfo, Reporter},
        main_loop::{self, Earlier},
        metrics,
        operator::AgentInfo,
        reload,
        watcher::{self, Watcher},
    },
    datapath::{
        btf,
        hooks::{self, HookChoice},
        iface, loader,
        maps::LiveMaps,
        pin::{self, PinDir},
        tc,
        uprobes::Prober,
    },
    libraries::{self, DiscoverOptions},
    policy,
};

#[derive(clap::Args)]
pub struct AttachArgs {
    /// Interface to filter (repeatable). Default: the interface of the default route.
    #[arg(long = "iface", value_name = "IFACE")]
    pub ifaces: Vec<String>,
    /// Policy file. Default: the embedded default policy (audit mode, allow OpenSSL).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Audit only: report what would be blocked, block nothing (overrides the policy's mode).
    #[arg(long)]
    pub dry_run: bool,
    /// Kernel TCP hook form; `auto` takes the cheapest that works here.
    #[arg(long, value_enum, default_value = "auto")]
    pub kernel_hook: HookChoice,
    /// Event output: text log lines on stderr, or JSON lines on stdout.
    #[arg(long, value_enum, default_value = "text")]
    pub events: EventFormat,
    /// Also append every event as a JSON line to FILE (docs/events.md).
    #[arg(long, value_name = "FILE")]
    pub events_file: Option<PathBuf>,
    /// Pin maps and links under DIR (on bpffs): enforcement outlives the agent, and the next
    /// agent with the same DIR takes it over (docs/operations.md).
    #[arg(long, value_name = "DIR")]
    pub pin: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// The operator socket (`enforcer status`, `flows`, `block`, `unblock`, `reload`).
    #[arg(long, value_name = "PATH", default_value = crate::agent::control::DEFAULT_SOCKET)]
    pub control_socket: PathBuf,
    /// Capacity of the flow table (LRU).
    #[arg(long, value_name = "N", default_value_t = crate::datapath::loader::DEFAULT_FLOWS_MAX, value_parser = clap::value_parser!(u32).range(1..))]
    pub flows_max: u32,
    /// Capacity of the blocklist (a full blocklist is reported, never evicted).
    #[arg(long, value_name = "N", default_value_t = crate::datapath::loader::DEFAULT_BLOCKLIST_MAX, value_parser = clap::value_parser!(u32).range(1..))]
    pub blocklist_max: u32,
    /// On a policy reload, judge established flows again too (else only new ones).
    #[arg(long)]
    pub reevaluate_established: bool,
}

pub async fn run(args: AttachArgs) -> Result<()> {
    let policy = match &args.policy {
        Some(path) => policy::load(path)?,
        None => policy::embedded_default(),
    };
    let mode = policy.effective_mode(args.dry_run);
    let (connection, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    tokio::spawn(connection);

    // Everything that can be checked without touching the kernel is checked first.
    let names = match args.ifaces.is_empty() {
        true => vec![iface::default_route_interface(&handle).await?],
        false => args.ifaces.clone(),
    };
    let ifaces = names
        .iter()
        .map(|name| {
            let index = iface::ifindex(name)?;
            iface::require_ethernet(name)?;
            Ok((name.clone(), index))
        })
        .collect::<Result<Vec<_>>>()?;
    let offsets = btf::sock_offsets()?;
    let pin = match &args.pin {
        Some(dir) => Some(PinDir::create(dir)?),
        None => None,
    };
    let reporter = Reporter::new(HashMap::new(), args.events);
    let reporter = match &args.events_file {
        Some(path) => reporter
            .with_events_file(path)
            .with_context(|| format!("opening the events file {}", path.display()))?,
        None => reporter,
    };
    let metrics = match args.metrics {
        Some(addr) => Some(
            metrics::bind(addr)
                .await
                .with_context(|| format!("--metrics {addr}"))?,
        ),
        None => None,
    };
    let opts = DiscoverOptions {
        catalog: policy.catalog.clone(),
        ..DiscoverOptions::default()
    };
    let mut libs = tokio::task::spawn_blocking(move || libraries::discover(&opts))
        .await
        .context("library discovery panicked")??;

    let load = loader::LoadOptions {
        flows_max: args.flows_max,
        blocklist_max: args.blocklist_max,
        pin: pin.clone(),
    };
    let mut ebpf = loader::load_with(&offsets, &load)?;
    for (map, asked, actual) in loader::pinned_size_mismatches(&ebpf, &load) {
        warn!(
            map,
            asked,
            actual,
            "pinned map reused with its earlier size; `enforcer detach --pin` first to resize"
        );
    }
    let mut live = LiveMaps::open(&ebpf)?;
    // With pinned maps, library ids continue after the earlier runs' (their flows keep theirs).
    let earlier = pin
        .as_ref()
        .map(|dir| Earlier::read(dir, &live))
        .transpose()?;
    if let Some(earlier) = &earlier {
        for lib in &mut libs {
            lib.id += earlier.max_lib_id;
        }
    }
    loader::set_mode(&mut ebpf, mode)?;
    let prober = Prober::new(&mut ebpf)?;
    let covered = attach_libraries(&mut ebpf, &prober, &policy, &libs)?;
    for (id, info) in covered {
        reporter.add_library(id, info);
    }

    let btf = Btf::from_sys_fs().ok();
    let hook = hooks::attach_choice(&mut ebpf, args.kernel_hook, btf.as_ref())?;
    let form = hook.form;
    for (cheaper, why) in &hook.skipped {
        info!(form = %cheaper, "kernel hook form unavailable: {why}");
    }
    info!(form = %form, targets = ?hook.targets, "kernel TCP hook attached");
    let late = hook.targets.iter().any(|t| t == "sock_send_length");
    let unattributed = loader::set_hello_policy(&mut ebpf, &policy, late)?;
    if unattributed != policy.unattributed_tls {
        warn!(policy = %policy.unattributed_tls, applied = %unattributed, "the kernel hook attributes sends only after they leave (sock_send_length): unattributed TLS is reported, not blocked, and server-name rules judge without the name");
    }
    hooks::attach_always(&mut ebpf)?;

    let ring = take_events(&mut ebpf)?;
    let mut filters = Vec::new();
    let mut attached = Attached::default();
    let result = attach_interfaces(
        &mut ebpf,
        &handle,
        &ifaces,
        pin.as_ref(),
        &mut filters,
        &mut attached,
    )
    .await;
    let programs = pin::datapath_programs(&ebpf, &prober.program_fds());
    // Bound once attached: an agent that cannot attach fails for that reason, not this one.
    let result = result.and_then(|()| control::bind(&args.control_socket));
    let served_control = result.is_ok();
    let (result, watcher) = match result {
        Ok(control) => {
            if let (Some(dir), Some(earlier)) = (&pin, &earlier) {
                // Ours are attached: the earlier run's links can go (no gap), and what we have
                // is pinned at once (a SIGKILL right after `ready` leaves enforcement in place).
                earlier.retire(dir, &handle, &ifaces, &mut live).await;
                pin_sweep(dir, &programs);
            }
            // From here on the watcher owns the object: it probes library files that appear
            // later, pausing the processes that map them until they are probed.
            let mut watcher = Watcher::start(
                ebpf,
                watcher::Setup {
                    policy: &policy,
                    libraries: &libs,
                    reporter: reporter.clone(),
                    pause: true,
                    prober,
                },
            );
            let info = AgentInfo {
                interfaces: names.clone(),
                kernel_hook: form.name(),
                kernel_hook_targets: hook.targets.iter().map(|t| t.to_string()).collect(),
                new_files: watcher.status.name(),
                pin: pin.as_ref().map(|d| d.root().display().to_string()),
                started: Instant::now(),
            };
            let run = main_loop::Running {
                info,
                reporter: reporter.clone(),
                maps: Arc::new(Mutex::new(live)),
                policy,
                reload: args.policy.clone().map(|path| reload::ReloadConfig {
                    path,
                    dry_run: args.dry_run,
                    reevaluate_established: args.reevaluate_established,
                    late_attribution: late,
                }),
                pin: pin.clone().map(|dir| (dir, programs)),
                control: Some(control),
                control_path: args.control_socket.clone(),
                metrics,
            };
            let result = run.serve(ring, &mut watcher).await;
            // Hooks off and every paused process resumed before anything is taken down.
            tokio::task::block_in_place(|| watcher.stop());
            (result, watcher)
        }
        Err(err) => {
            for path in &attached.pinned {
                let _ = pin::unpin(path);
            }
            (Err(err), Watcher::hold(ebpf, prober))
        }
    };
    if served_control {
        let _ = std::fs::remove_file(&args.control_socket);
    }
    let persist = pin.is_some() && result.is_ok();
    if persist {
        // Pinned: the tc filter stays with the pinned links and maps (see `pin`).
        info!(pin = %args.pin.as_deref().unwrap_or(Path::new("")).display(), "pinned state left in place: enforcement goes on; `enforcer detach --pin DIR` removes it");
    } else {
        for filter in filters {
            if let Err(err) = filter.detach(&handle).await {
                error!("detaching the tc filter failed: {err}");
            }
        }
    }
    // Dropping the watcher drops the object and the prober: uprobes, hooks and XDP links go
    // (pinned ones stay).
    drop(watcher);
    info!(
        "{}",
        if persist {
            "exited, pinned state kept"
        } else {
            "detached"
        }
    );
    result
}

fn pin_sweep(dir: &PinDir, programs: &[u32]) {
    match pin::sweep(dir, programs) {
        Ok(n) if n > 0 => info!(links = n, "links pinned"),
        Ok(_) => {}
        Err(err) => warn!("pinning links failed: {err}"),
    }
}

/// Sets each library's action from the policy and probes it. A library that cannot be probed is
/// reported and left out; the run goes on for the others.
fn attach_libraries(
    ebpf: &mut Ebpf,
    prober: &Prober,
    policy: &policy::Policy,
    libs: &[libraries::Library],
) -> Result<HashMap<u32, LibInfo>> {
    let mut covered = HashMap::new();
    for lib in libs {
        let decision = loader::apply_library_policy(ebpf, policy, lib)?;
        match prober.attach(lib, || &mut *ebpf) {
            Ok(functions) => {
                let version = lib.identity.version.as_deref().unwrap_or("unknown");
                info!(id = lib.id, family = %lib.family, version, path = %lib.path.display(), functions, action = %decision.action, rule_line = ?decision.rule_line, "library probed");
                covered.insert(lib.id, LibInfo::of(lib));
            }
            Err(err) => error!("library not covered: {err:#}"),
        }
    }
    if covered.is_empty() {
        warn!("no TLS library could be probed: no connection will be attributed");
    }
    Ok(covered)
}

/// What this run pinned so far (undone if the start fails).
#[derive(Default)]
struct Attached {
    pinned: Vec<PathBuf>,
}

async fn attach_interfaces(
    ebpf: &mut Ebpf,
    handle: &rtnetlink::Handle,
    ifaces: &[(String, u32)],
    pin: Option<&PinDir>,
    filters: &mut Vec<tc::EgressFilter>,
    attached: &mut Attached,
) -> Result<()> {
    let xdp: &mut Xdp = program(ebpf, "enforcer_ingress")?;
    xdp.load()?;
    for (name, index) in ifaces {
        if let Some(dir) = pin
            && dir.xdp_path(*index).exists()
        {
            // The earlier run's link: our program takes its place in it, atomically.
            let link = PinnedLink::from_pin(dir.xdp_path(*index))
                .with_context(|| format!("opening the pinned XDP link of {name}"))?;
            let link = XdpLink::try_from(FdLink::from(link))
                .with_context(|| format!("pinned XDP link of {name}"))?;
            xdp.attach_to_link(link).with_context(|| {
                format!("replacing the program of the pinned XDP link of {name}")
            })?;
            info!(iface = %name, "XDP: took over the pinned link");
            continue;
        }
        let id = match xdp.attach_to_if_index(*index, XdpMode::Default) {
            Ok(id) => id,
            Err(native) => xdp.attach_to_if_index(*index, XdpMode::Skb).with_context(|| {
                format!("attaching XDP to {name} failed (native: {native}); if another XDP program is attached, see `ip link show {name}`")
            })?,
        };
        if let Some(dir) = pin {
            let link: FdLink = xdp.take_link(id)?.try_into().with_context(|| {
                format!("XDP on {name} is not a bpf link (kernel < 5.9?): cannot pin it")
            })?;
            let path = dir.xdp_path(*index);
            // Pinned, the link outlives the fd we drop here.
            link.pin(&path)
                .with_context(|| format!("pinning the XDP link of {name} at {}", path.display()))?;
            attached.pinned.push(path);
        }
    }
    let classifier: &mut SchedClassifier = program(ebpf, "enforcer_egress")?;
    classifier.load()?;
    let fd = classifier.fd()?;
    for (name, index) in ifaces {
        if pin.is_some() {
            filters.push(tc::replace_egress(handle, *index, fd.as_fd(), tc::FILTER_NAME).await?);
            info!(iface = %name, "XDP (ingress) and tc (egress) attached, pinned");
            continue;
        }
        let stale = tc::remove_stale(handle, *index, tc::FILTER_NAME).await?;
        if stale > 0 {
            warn!(iface = %name, stale, "removed tc filters left by an earlier agent");
        }
        filters.push(tc::attach_egress(handle, *index, fd.as_fd(), tc::FILTER_NAME).await?);
        info!(iface = %name, "XDP (ingress) and tc (egress) attached");
    }
    Ok(())
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let Some(program) = ebpf.program_mut(name) else {
        bail!("program {name} is missing from the eBPF object");
    };
    Ok(program.try_into()?)
}

fn take_events(ebpf: &mut Ebpf) -> Result<RingBuf<MapData>> {
    let map = ebpf.take_map(maps::EVENTS).context("EVENTS map missing")?;
    Ok(RingBuf::try_from(map)?)
}
