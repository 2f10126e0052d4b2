//! `enforcer attach`: load, attach everything, report until a signal, then detach everything
//! (with `--pin`: leave the pinned state in force, see `pin`).
//!
//! [`run`] goes through named steps: [`privileges`] (the capabilities it needs), `check`
//! (everything that needs no kernel object), `load`, `register_libraries`, `attach_hook`,
//! `attach_interfaces`, then `serve` and `teardown`.
//!
//! Rollback: every piece is owned by something that undoes it. Uprobes, the kernel hook, the
//! tracepoints and XDP are aya links owned by the `Ebpf` object in the [`Datapath`] (detached
//! when it drops, and by the kernel if the process dies); the tc filters are netlink objects and
//! are removed explicitly, on success, error and signal alike.

mod earlier;
mod host_layer;
mod iface_lock;
mod interfaces;
pub mod privileges;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use anyhow::{Context, Result};
use aya::{
    Btf, Ebpf,
    maps::{MapData, RingBuf},
};
use enforcer_common::{flow::SockOffsets, maps};
use tokio::net::{TcpListener, UnixListener};
use tracing::{error, info, warn};

use crate::{
    agent::{
        control,
        events::{self, EventFormat, Reporter},
        layers, main_loop, metrics,
        operator::AgentInfo,
        reload,
        watcher::{self, Watcher},
    },
    datapath::{
        Datapath, RegisterError, btf, features,
        hooks::{self, AttachedHook, HookChoice},
        iface, loader,
        pin::{self, PinDir},
        table::Libraries,
    },
    libraries::{self, DiscoverOptions, Library},
    policy::{self, Policy},
};

use earlier::Earlier;
use host_layer::HostLayer;
use interfaces::{Attached, IngressChoice, TcAttach};

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
    /// Where arriving packets of blocked flows are dropped: `auto` puts the tc classifier on
    /// virtual devices (veth, bridge, loopback) and NICs without native XDP, native XDP on the
    /// others (docs/architecture.md says why).
    #[arg(long, value_enum, default_value = "auto")]
    pub ingress: IngressChoice,
    /// How the tc classifiers go on their hooks: `netlink` (a cls_bpf filter at preference 50,
    /// after any tcx program such as Cilium's), `tcx` (a tcx link first on the hook, Linux 6.6+;
    /// pinned and taken over with --pin), `auto` (tcx where the kernel has it, netlink with
    /// --pin). `enforcer status` says what runs before ours either way.
    #[arg(long, value_enum, default_value = "netlink")]
    pub tc_attach: TcAttach,
    /// `cgroup`: also drop blocklisted flows' packets host-wide, on every interface and in every
    /// network namespace (cgroup_skb on the root cgroup v2; not pinned: goes with the agent).
    #[arg(long, value_enum, default_value = "none")]
    pub host_layer: HostLayer,
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
    /// Serve Prometheus metrics at http://ADDR/metrics. A bare PORT binds 127.0.0.1:PORT; the
    /// endpoint has no authentication, so bind another address only behind a firewall.
    #[arg(long, value_name = "[ADDR:]PORT", value_parser = metrics::parse_addr)]
    pub metrics: Option<SocketAddr>,
    /// The operator socket (`enforcer status`, `flows`, `block`, `unblock`, `reload`).
    #[arg(long, value_name = "PATH", default_value = crate::agent::control::DEFAULT_SOCKET)]
    pub control_socket: PathBuf,
    /// Capacity of the flow table (LRU).
    #[arg(long, value_name = "N", default_value_t = crate::datapath::loader::DEFAULT_FLOWS_MAX, value_parser = clap::value_parser!(u32).range(1..))]
    pub flows_max: u32,
    /// Capacity of the blocklist (never evicted; a denied flow that does not fit is dropped
    /// through the overflow table, and reported).
    #[arg(long, value_name = "N", default_value_t = crate::datapath::loader::DEFAULT_BLOCKLIST_MAX, value_parser = clap::value_parser!(u32).range(1..))]
    pub blocklist_max: u32,
    /// Seconds between blocklist sweeps: an entry without a local socket at two sweeps in a row
    /// moves to the overflow table (still dropped). 0: no sweep.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub blocklist_sweep: u64,
    /// Most libraries that hold an id of their own at once (at most 4095, the default). A
    /// library past it is probed under a shared id and judged by the policy's `default`
    /// (a `capacity` event; docs/architecture.md, threat model).
    #[arg(long, value_name = "N", default_value_t = crate::datapath::capacity::DEFAULT_MAX_LIBRARIES, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::datapath::capacity::DEFAULT_MAX_LIBRARIES)))]
    pub max_libraries: u32,
    /// Most library ids the libraries brought in by the processes of one user (uid, root
    /// excepted) may hold: a user's flood of libraries cannot take every id from the others.
    /// 0 (the default): half of --max-libraries.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_libraries_per_user: u32,
    /// Seconds between passes of the library sweep: a library no process maps at two complete
    /// censuses of /proc/*/maps in a row is released (probes detached, its id's slot free).
    /// 0: never released.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub library_sweep: u64,
    /// On a policy reload, judge established flows again too (else only new ones).
    #[arg(long)]
    pub reevaluate_established: bool,
    /// Whose blocked sockets are aborted: `all` network namespaces (a container's socket in its
    /// own), or only the agent's `own` (other namespaces' blocked flows are still dropped on the
    /// filtered interfaces; their applications wait for their own timeout).
    #[arg(long, value_enum, default_value = "all")]
    pub abort_namespaces: crate::agent::events::AbortNamespaces,
}

pub async fn run(args: AttachArgs) -> Result<()> {
    // Before any kernel object exists: a user without them gets one message naming them all.
    privileges::require()?;
    let (mut checked, policy) = check(&args).await?;
    let (datapath, earlier) = load(&args, &checked, policy)?;
    let datapath = Arc::new(datapath);
    register_libraries(&datapath, &checked.found, &checked.reporter)?;
    let hook = attach_hook(&datapath, args.kernel_hook)?;
    let rings = take_events(&mut datapath.ebpf())?;
    let mut attached = Attached::default();
    let result = attach_interfaces(&datapath, &checked, args.ingress, &mut attached).await;
    let mut host = None;
    let result = result.and_then(|()| {
        if args.host_layer == HostLayer::Cgroup {
            host = Some(host_layer::attach(&mut datapath.ebpf())?);
        }
        Ok(())
    });
    let programs = datapath.pinned_program_ids();
    // Bound once attached: an agent that cannot attach fails for that reason, not this one.
    let result = result.and_then(|()| control::bind(&args.control_socket));
    let served_control = result.is_ok();
    let result = match result {
        Ok(control) => {
            let ready = Ready {
                datapath: &datapath,
                hook: &hook,
                earlier: earlier.as_ref(),
                programs,
                control,
                ingress: attached
                    .ingress
                    .iter()
                    .map(|(n, f)| (n.clone(), f.name()))
                    .collect(),
                layers: attached.layer_specs(&checked.ifaces),
                host: host.map(|root| root.display().to_string()),
            };
            serve(&args, &mut checked, ready, rings).await
        }
        Err(err) => {
            for path in &attached.pinned {
                let _ = pin::unpin(path);
            }
            Err(err)
        }
    };
    if served_control {
        let _ = std::fs::remove_file(&args.control_socket);
    }
    teardown(&args, &checked.handle, datapath, attached, result).await
}

/// What [`check`] found: everything that can be checked without touching the kernel.
struct Checked {
    handle: rtnetlink::Handle,
    names: Vec<String>,
    ifaces: Vec<(String, u32)>,
    offsets: SockOffsets,
    pin: Option<PinDir>,
    /// The library table the reporter reads (the datapath fills it).
    libraries: Libraries,
    reporter: Reporter,
    metrics: Option<(TcpListener, SocketAddr)>,
    /// Every library discovery found (the watcher will not examine them again).
    found: Vec<Library>,
    /// The policy file's fingerprint from before it was read (`ReloadConfig::loaded`).
    policy_fingerprint: Option<reload::Fingerprint>,
    /// `--tc-attach` resolved: the classifiers go on as tcx links.
    tcx: bool,
    /// Held until the agent exits: no second agent takes these interfaces.
    _locks: iface_lock::IfaceLocks,
}

/// Also returns the policy, which [`load`] hands to the datapath.
async fn check(args: &AttachArgs) -> Result<(Checked, Policy)> {
    let tcx = args.tc_attach.tcx(args.pin.is_some())?;
    let policy_fingerprint = args.policy.as_deref().and_then(reload::fingerprint);
    let policy = match &args.policy {
        Some(path) => policy::load(path)?,
        None => policy::embedded_default(),
    };
    let (connection, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    tokio::spawn(connection);
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
    let locks = iface_lock::acquire(&ifaces)?;
    let offsets = btf::sock_offsets()?;
    // Before anything is loaded: a kernel without a feature enforcer cannot do without is
    // refused with the kernel it needs, not with a verifier error on the first program.
    features::require()?;
    let pin = match &args.pin {
        Some(dir) => Some(PinDir::create(dir)?),
        None => None,
    };
    let libraries = Libraries::default();
    let mut reporter = Reporter::new(libraries.clone(), args.events);
    reporter.abort_in(args.abort_namespaces);
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
    let found = tokio::task::spawn_blocking(move || libraries::discover(&opts))
        .await
        .context("library discovery panicked")??;
    // Discovery read every candidate's tables; what it keeps is small.
    crate::agent::memory::trim();
    let checked = Checked {
        tcx,
        _locks: locks,
        handle,
        names,
        ifaces,
        offsets,
        pin,
        libraries,
        reporter,
        metrics,
        found,
        policy_fingerprint,
    };
    Ok((checked, policy))
}

/// Loads the object (reusing pinned maps) and hands it to the [`Datapath`], which writes `MODE`.
fn load(
    args: &AttachArgs,
    checked: &Checked,
    policy: Policy,
) -> Result<(Datapath, Option<Earlier>)> {
    let load = loader::LoadOptions {
        flows_max: args.flows_max,
        blocklist_max: args.blocklist_max,
        pin: checked.pin.clone(),
    };
    let ebpf = loader::load_with(&checked.offsets, &load)?;
    for (map, asked, actual) in loader::pinned_size_mismatches(&ebpf, &load) {
        warn!(
            map,
            asked,
            actual,
            "pinned map reused with its earlier size; `enforcer detach --pin` first to resize"
        );
    }
    let datapath = Datapath::new(
        ebpf,
        checked.libraries.clone(),
        policy,
        args.dry_run,
        (args.max_libraries, args.max_libraries_per_user),
    )?;
    let earlier = checked
        .pin
        .as_ref()
        .map(|dir| Earlier::read(dir, datapath.earlier_max_id()))
        .transpose()?;
    Ok((datapath, earlier))
}

/// Registers (policy, then probes) each library discovery found. A library that cannot be
/// probed is reported and left out; the run goes on for the others.
fn register_libraries(datapath: &Datapath, found: &[Library], reporter: &Reporter) -> Result<()> {
    for lib in found {
        // A runtime's file (a JVM) has nothing to probe: its processes' TLS is judged as they
        // send it (`agent::events::who`).
        if lib.probes.is_empty() {
            info!(family = %lib.family, version = lib.identity.version.as_deref().unwrap_or("unknown"), path = %lib.path.display(), "runtime found: nothing to probe");
            continue;
        }
        match datapath.register(lib.clone(), None) {
            Ok(r) if r.over_capacity.is_some() => {
                watcher::report_over_capacity(datapath, reporter, &r, lib, "start", None, "");
            }
            Ok(r) => {
                let version = lib.identity.version.as_deref().unwrap_or("unknown");
                info!(id = r.id, family = %lib.family, version, path = %lib.path.display(), functions = r.functions, action = %r.decision.action, rule_line = r.decision.rule_line, "library probed");
            }
            Err(err @ RegisterError::Maps { .. }) => return Err(err.into()),
            Err(err) => error!("library not covered: {err:#}"),
        }
    }
    if datapath.libraries().is_empty() {
        warn!("no TLS library could be probed: no connection will be attributed");
    }
    Ok(())
}

/// The kernel TCP hook (the cheapest form that works with `auto`), then `HELLO_POLICY` for it,
/// then the always-on tracepoints.
fn attach_hook(datapath: &Datapath, choice: HookChoice) -> Result<AttachedHook> {
    let btf = Btf::from_sys_fs().ok();
    let hook = hooks::attach_choice(&mut datapath.ebpf(), choice, btf.as_ref())?;
    for (cheaper, why) in &hook.skipped {
        info!(form = %cheaper, "kernel hook form unavailable: {why}");
    }
    info!(form = %hook.form, targets = ?hook.targets, "kernel TCP hook attached");
    let late = hook.targets.iter().any(|t| t == "sock_send_length");
    let unattributed = datapath.set_late_attribution(late)?;
    let wanted = datapath.policy().read().policy.unattributed_tls;
    if unattributed != wanted {
        warn!(policy = %wanted, applied = %unattributed, "the kernel hook attributes sends only after they leave (sock_send_length): unattributed TLS is reported, not blocked, and server-name rules judge without the name");
    }
    hooks::attach_always(&mut datapath.ebpf())?;
    Ok(hook)
}

async fn attach_interfaces(
    datapath: &Datapath,
    checked: &Checked,
    ingress: IngressChoice,
    attached: &mut Attached,
) -> Result<()> {
    let pin = checked.pin.as_ref();
    let ifaces = &checked.ifaces;
    let classifiers = interfaces::attach_xdp(&mut datapath.ebpf(), ifaces, ingress, pin, attached)?;
    interfaces::attach_tc(
        &checked.handle,
        ifaces,
        &classifiers,
        pin,
        checked.tcx,
        attached,
    )
    .await
}

/// What [`serve`] needs besides the checked start-up values.
struct Ready<'a> {
    datapath: &'a Arc<Datapath>,
    hook: &'a AttachedHook,
    earlier: Option<&'a Earlier>,
    /// Programs whose links `--pin` pins.
    programs: Vec<u32>,
    control: UnixListener,
    /// Each interface's ingress form (`--ingress`), for `enforcer status`.
    ingress: Vec<(String, &'static str)>,
    /// Each interface's hooks, for the layers `enforcer status` reports.
    layers: Vec<layers::Spec>,
    /// `--host-layer cgroup`: the cgroup v2 root its programs are on.
    host: Option<String>,
}

/// Retires the earlier run's pinned state, starts the watcher, and runs the main loop until a
/// signal. Returns once every paused process is resumed and the watcher's hooks are off.
async fn serve(
    args: &AttachArgs,
    checked: &mut Checked,
    ready: Ready<'_>,
    rings: events::Rings,
) -> Result<()> {
    let datapath = ready.datapath;
    if let (Some(dir), Some(earlier)) = (&checked.pin, ready.earlier) {
        // Ours are attached: the earlier run's links can go (no gap), and what we have is
        // pinned at once (a SIGKILL right after `ready` leaves enforcement in place).
        earlier
            .retire(dir, &checked.handle, &checked.ifaces, datapath)
            .await;
        pin_sweep(dir, &ready.programs);
    }
    // From here on the watcher probes library files that appear later, pausing the processes
    // that map them until they are probed.
    let mut watcher = Watcher::start(
        datapath.clone(),
        watcher::Setup {
            libraries: &checked.found,
            reporter: checked.reporter.clone(),
            pause: true,
            library_sweep: match checked.pin {
                // Pinned links are not the agent's to release (docs/operations.md).
                Some(_) => 0,
                None => args.library_sweep,
            },
        },
    );
    let info = AgentInfo {
        egress: match checked.tcx {
            true => interfaces::TCX_FORM,
            false => interfaces::NETLINK_FORM,
        },
        interfaces: checked.names.clone(),
        ingress: ready.ingress,
        kernel_hook: ready.hook.form.name(),
        kernel_hook_targets: ready.hook.targets.iter().map(|t| t.to_string()).collect(),
        new_files: watcher.status.name(),
        pin: checked.pin.as_ref().map(|d| d.root().display().to_string()),
        started: Instant::now(),
    };
    let layers = layers::Layers::new(checked.handle.clone(), ready.layers, ready.host);
    let run = main_loop::Running {
        layers,
        info,
        reporter: checked.reporter.clone(),
        datapath: datapath.clone(),
        reload: args.policy.clone().map(|path| reload::ReloadConfig {
            path,
            reevaluate_established: args.reevaluate_established,
            loaded: checked.policy_fingerprint,
        }),
        pin: checked.pin.clone().map(|dir| (dir, ready.programs)),
        control: Some(ready.control),
        control_path: args.control_socket.clone(),
        metrics: checked.metrics.take(),
        blocklist_sweep: args.blocklist_sweep,
    };
    let result = run.serve(rings).await;
    // Hooks off and every paused process resumed before anything is taken down.
    tokio::task::block_in_place(|| {
        watcher.stop();
        checked.reporter.flush();
    });
    result
}

/// Removes the tc filters (unless pinned state is kept), then drops the datapath: uprobes, hooks
/// and XDP links go (pinned ones stay).
async fn teardown(
    args: &AttachArgs,
    handle: &rtnetlink::Handle,
    datapath: Arc<Datapath>,
    attached: Attached,
    result: Result<()>,
) -> Result<()> {
    let persist = args.pin.is_some() && result.is_ok();
    if persist {
        // Pinned: the tc filter stays with the pinned links and maps (see `pin`).
        info!(pin = %args.pin.as_deref().unwrap_or(Path::new("")).display(), "pinned state left in place: enforcement goes on; `enforcer detach --pin DIR` removes it");
    } else {
        // Last attached first: the filter that created an interface's clsact qdisc removes it
        // only once the other hook has no filter left.
        for filter in attached.filters.into_iter().rev() {
            if let Err(err) = filter.detach(handle).await {
                error!("detaching the tc filter failed: {err}");
            }
        }
    }
    drop(datapath);
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

fn take_events(ebpf: &mut Ebpf) -> Result<events::Rings> {
    let mut ring = |name: &str| -> Result<RingBuf<MapData>> {
        let map = ebpf
            .take_map(name)
            .with_context(|| format!("{name} map missing"))?;
        Ok(RingBuf::try_from(map)?)
    };
    Ok(events::Rings {
        connections: ring(maps::EVENTS)?,
        hellos: ring(maps::HELLO_EVENTS)?,
    })
}
