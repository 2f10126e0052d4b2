//! `enforcer attach`: load, attach everything, report until a signal, then detach everything.
//!
//! Rollback: every piece is owned by something that undoes it. Uprobes, the kernel hook, the
//! tracepoints and XDP are aya links owned by the `Ebpf` object (detached when it drops, and by
//! the kernel if the process dies); the tc filters are netlink objects and are removed
//! explicitly, on success, error and signal alike.

use std::{collections::HashMap, os::fd::AsFd, path::PathBuf};

use anyhow::{Context, Result, bail};
use aya::{
    Btf, Ebpf,
    maps::{MapData, RingBuf},
    programs::{SchedClassifier, Xdp, XdpMode},
};
use enforcer_common::maps;
use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::{
    btf,
    events::{self, EventFormat, LibInfo, Reporter},
    hooks::{self, HookChoice},
    iface,
    libraries::{self, DiscoverOptions},
    loader, policy, tc,
    uprobes::Prober,
    watcher::{self, Watcher},
};

/// Name of our tc filter; also the prefix `remove_stale` looks for after a SIGKILL.
pub const TC_FILTER_NAME: &str = "enforcer_egress";

pub struct AttachArgs {
    pub ifaces: Vec<String>,
    pub policy: Option<PathBuf>,
    pub dry_run: bool,
    pub kernel_hook: HookChoice,
    pub events: EventFormat,
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
    let opts = DiscoverOptions {
        catalog: policy.catalog.clone(),
        ..DiscoverOptions::default()
    };
    let libs = tokio::task::spawn_blocking(move || libraries::discover(&opts))
        .await
        .context("library discovery panicked")??;

    let mut ebpf = loader::load(&offsets)?;
    loader::set_mode(&mut ebpf, mode)?;
    let prober = Prober::new(&mut ebpf)?;
    let covered = attach_libraries(&mut ebpf, &prober, &policy, &libs)?;

    let btf = Btf::from_sys_fs().ok();
    let hook = hooks::attach_choice(&mut ebpf, args.kernel_hook, btf.as_ref())?;
    let form = hook.form;
    for (cheaper, why) in &hook.skipped {
        info!(form = %cheaper, "kernel hook form unavailable: {why}");
    }
    info!(form = %form, targets = ?hook.targets, "kernel TCP hook attached");
    hooks::attach_always(&mut ebpf)?;

    let ring = take_events(&mut ebpf)?;
    let mut filters = Vec::new();
    let result = attach_interfaces(&mut ebpf, &handle, &ifaces, &mut filters).await;
    let (result, watcher) = match result {
        Ok(()) => {
            let reporter = Reporter::new(covered, args.events);
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
            reporter.lifecycle(json!({
                "type": "ready",
                "interfaces": names,
                "mode": mode.name(),
                "policy": policy.source,
                "kernel_hook": form.name(),
                "libraries": reporter.library_count(),
                "new_files": watcher.status.name(),
            }));
            info!(interfaces = ?names, mode = %mode, kernel_hook = %form, libraries = reporter.library_count(), new_files = watcher.status.name(), "enforcer ready");
            let result = serve(ring, reporter).await;
            // Hooks off and every paused process resumed before anything is taken down.
            tokio::task::block_in_place(|| watcher.stop());
            (result, watcher)
        }
        Err(err) => (Err(err), Watcher::hold(ebpf, prober)),
    };
    for filter in filters {
        if let Err(err) = filter.detach(&handle).await {
            error!("detaching the tc filter failed: {err}");
        }
    }
    // Dropping the watcher drops the object and the prober: uprobes, hooks and XDP links go.
    drop(watcher);
    info!("detached");
    result
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
        let decision = policy.decide(lib);
        loader::set_library_action(ebpf, lib.id, decision.action)?;
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

async fn attach_interfaces(
    ebpf: &mut Ebpf,
    handle: &rtnetlink::Handle,
    ifaces: &[(String, u32)],
    filters: &mut Vec<tc::EgressFilter>,
) -> Result<()> {
    let xdp: &mut Xdp = program(ebpf, "enforcer_ingress")?;
    xdp.load()?;
    for (name, index) in ifaces {
        if let Err(native) = xdp.attach_to_if_index(*index, XdpMode::Default) {
            xdp.attach_to_if_index(*index, XdpMode::Skb).with_context(|| {
                format!("attaching XDP to {name} failed (native: {native}); if another XDP program is attached, see `ip link show {name}`")
            })?;
        }
    }
    let classifier: &mut SchedClassifier = program(ebpf, "enforcer_egress")?;
    classifier.load()?;
    let fd = classifier.fd()?;
    for (name, index) in ifaces {
        let stale = tc::remove_stale(handle, *index, TC_FILTER_NAME).await?;
        if stale > 0 {
            warn!(iface = %name, stale, "removed tc filters left by an earlier agent");
        }
        filters.push(tc::attach_egress(handle, *index, fd.as_fd(), TC_FILTER_NAME).await?);
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

async fn serve(ring: RingBuf<MapData>, reporter: Reporter) -> Result<()> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    tokio::select! {
        result = events::run(ring, reporter) => result.context("reading events"),
        _ = sigint.recv() => { info!("SIGINT: detaching"); Ok(()) }
        _ = sigterm.recv() => { info!("SIGTERM: detaching"); Ok(()) }
    }
}
