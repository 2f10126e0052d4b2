//! The packet layers this agent put on its interfaces and what each can see: per interface the
//! ingress filter (XDP or tc) and the egress classifier, each with the programs and filters
//! that run before it there (`datapath::tc::ahead`). Read at the first tick after `ready` and
//! every [`EVERY`] ticks after, because another tool (Cilium's tcx programs, a `tc filter add
//! ... pref 1`) can come at any time. A change is a warning and a `layer` event; `enforcer
//! status` shows the last reading.
//!
//! What no layer sees without the host layer: interfaces not given to `attach`, loopback among
//! them. Attribution and the socket abort are host-wide (uprobes and TCP hooks see every
//! process), but the packets of a denied flow are dropped, and hellos judged, only on the
//! filtered interfaces. The host layer (`--host-layer cgroup`) does both for every local socket.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tracing::warn;

use crate::datapath::tc::{self, Ahead, Hook, Ours};

/// Ticks (seconds) between two readings.
pub const EVERY: u64 = 5;
/// The longest a reading may take (netlink dumps and `BPF_PROG_QUERY`s, a few per interface).
const READ_BOUND: std::time::Duration = std::time::Duration::from_secs(2);

/// Said in `enforcer status` of what no layer filters.
pub const NOT_FILTERED: &str = "packets on interfaces not given to attach (loopback included) are \
    not filtered; denied flows' sockets are aborted wherever they live";
/// ... and with the host-wide layer on.
pub const NOT_JUDGED: &str = "forwarded packets (no local socket: containers' and VMs' routed \
    traffic) are judged on the interfaces given to attach only; every local socket's are judged \
    by the host layer";
/// What the host-wide layer sees.
pub const HOST_SEES: &str = "every local socket's packets on every interface and in every \
    network namespace; drops blocklisted flows, judges hellos (egress)";

/// One hook of one interface, as last read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    pub interface: String,
    pub hook: Hook,
    /// `xdp native`, `tc`, `tcx (first)`, ... for ingress; `tc cls_bpf (netlink)` or
    /// `tcx (first)` for egress.
    pub form: &'static str,
    /// What runs before ours; `Err`: it could not be read (then what ours sees is unknown).
    pub ahead: Result<Vec<Ahead>, String>,
}

impl Layer {
    /// What our program on this hook sees, in words.
    pub fn sees(&self) -> String {
        match &self.ahead {
            Ok(ahead) if ahead.is_empty() => "every packet".to_owned(),
            Ok(ahead) => format!(
                "only what {} ahead of it leave{} to it: a verdict there ends the hook",
                describe(ahead),
                if ahead.len() == 1 { "s" } else { "" }
            ),
            Err(err) => format!("unknown ({err})"),
        }
    }

    pub fn to_json(&self) -> Value {
        let (ahead, error) = match &self.ahead {
            Ok(a) => (
                Value::from(a.iter().map(Ahead::to_json).collect::<Vec<_>>()),
                None,
            ),
            Err(e) => (Value::Null, Some(e.clone())),
        };
        json!({
            "interface": self.interface,
            "hook": self.hook.name(),
            "form": self.form,
            "ahead": ahead,
            "ahead_error": error,
            "sees": self.sees(),
        })
    }
}

fn describe(ahead: &[Ahead]) -> String {
    let each = ahead.iter().map(|a| match (a.id, a.pref) {
        (Some(id), _) => format!("{} {} (id {id})", a.kind.name(), a.name),
        (None, Some(pref)) => format!("{} {} (pref {pref})", a.kind.name(), a.name),
        (None, None) => format!("{} {}", a.kind.name(), a.name),
    });
    each.collect::<Vec<_>>().join(", ")
}

/// The last reading, shared with the operator socket.
pub type Shared = Arc<Mutex<Reading>>;

/// One interface's hooks as this agent attached them.
#[derive(Clone, Debug)]
pub struct Spec {
    pub interface: String,
    pub index: u32,
    pub ingress_form: &'static str,
    pub ingress: Ours,
    pub egress_form: &'static str,
    pub egress: Ours,
}

/// Reads the layers; owns the last reading.
pub struct Layers {
    handle: rtnetlink::Handle,
    specs: Vec<Spec>,
    last: Shared,
}

/// The last reading of the interfaces' hooks, and the host-wide layer's cgroup (if on).
#[derive(Default)]
pub struct Reading {
    pub hooks: Vec<Layer>,
    pub host: Option<String>,
}

impl Layers {
    pub fn new(handle: rtnetlink::Handle, specs: Vec<Spec>, host: Option<String>) -> Layers {
        let last = Shared::new(Mutex::new(Reading {
            hooks: vec![],
            host,
        }));
        Layers {
            handle,
            specs,
            last,
        }
    }

    pub fn shared(&self) -> Shared {
        self.last.clone()
    }

    /// Reads every hook again; returns the layers whose reading changed since the last one
    /// (all with something ahead, or unreadable, on the first reading).
    pub async fn refresh(&self) -> Vec<Layer> {
        let mut now = Vec::with_capacity(self.specs.len() * 2);
        for spec in &self.specs {
            let hooks = [
                (Hook::Ingress, spec.ingress_form, spec.ingress),
                (Hook::Egress, spec.egress_form, spec.egress),
            ];
            for (hook, form, ours) in hooks {
                let ahead = tc::ahead_of(&self.handle, &spec.interface, spec.index, hook, ours);
                now.push(Layer {
                    interface: spec.interface.clone(),
                    hook,
                    form,
                    ahead: ahead.await.map_err(|e| e.to_string()),
                });
            }
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let first = last.hooks.is_empty();
        let changed = now
            .iter()
            .filter(|l| {
                let old = last
                    .hooks
                    .iter()
                    .find(|o| o.interface == l.interface && o.hook == l.hook);
                match old {
                    Some(old) => old != *l,
                    None => !first || l.ahead.as_ref().map_or(true, |a| !a.is_empty()),
                }
            })
            .cloned()
            .collect();
        last.hooks = now;
        changed
    }

    /// [`Self::refresh`], each change warned about and reported as a `layer` event. Bounded
    /// in time: it runs on the main loop, which must keep serving signals and reloads.
    pub async fn check(&self, report: impl Fn(Value)) {
        let Ok(changed) = tokio::time::timeout(READ_BOUND, self.refresh()).await else {
            warn!("reading what runs before enforcer's programs took over {READ_BOUND:?}: skipped");
            return;
        };
        for layer in changed {
            match &layer.ahead {
                Ok(a) if a.is_empty() => {}
                Ok(_) => warn!(
                    iface = %layer.interface,
                    hook = layer.hook.name(),
                    sees = %layer.sees(),
                    "another program or filter runs before enforcer's on this hook"
                ),
                Err(err) => warn!(
                    iface = %layer.interface,
                    hook = layer.hook.name(),
                    "what runs before enforcer's program on this hook could not be read: {err}"
                ),
            }
            let mut event = layer.to_json();
            if let Some(o) = event.as_object_mut() {
                o.insert("type".into(), "layer".into());
            }
            report(event);
        }
    }
}

/// `enforcer status`'s `layers` value.
pub fn status(shared: &Shared) -> Value {
    let layers = shared.lock().unwrap_or_else(|e| e.into_inner());
    let host = layers.host.as_ref().map(|root| {
        json!({
            "form": format!("cgroup_skb egress and ingress on {root} (the root cgroup v2)"),
            "sees": HOST_SEES,
        })
    });
    json!({
        "hooks": layers.hooks.iter().map(Layer::to_json).collect::<Vec<_>>(),
        "host": host,
        "not_filtered": if host.is_some() { NOT_JUDGED } else { NOT_FILTERED },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::tc::AheadKind;

    fn layer(ahead: Result<Vec<Ahead>, String>) -> Layer {
        Layer {
            interface: "veth0".into(),
            hook: Hook::Egress,
            form: "tc cls_bpf",
            ahead,
        }
    }

    #[test]
    fn what_a_layer_sees_names_what_runs_before_it() {
        assert_eq!(layer(Ok(vec![])).sees(), "every packet");
        let tcx = Ahead {
            kind: AheadKind::Tcx,
            name: "cil_to_netdev".into(),
            id: Some(7),
            pref: None,
        };
        let filter = Ahead {
            kind: AheadKind::Filter,
            name: "matchall".into(),
            id: None,
            pref: Some(10),
        };
        assert_eq!(
            layer(Ok(vec![tcx.clone()])).sees(),
            "only what tcx cil_to_netdev (id 7) ahead of it leaves to it: a verdict there ends the hook"
        );
        assert_eq!(
            layer(Ok(vec![tcx, filter])).sees(),
            "only what tcx cil_to_netdev (id 7), tc filter matchall (pref 10) ahead of it leave to it: a verdict there ends the hook"
        );
        let unread = layer(Err("querying the tcx programs failed".into()));
        assert_eq!(unread.sees(), "unknown (querying the tcx programs failed)");
        assert_eq!(unread.to_json()["ahead"], Value::Null);
    }
}
