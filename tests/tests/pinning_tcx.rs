//! `--tc-attach tcx --pin` (Linux 6.6+): the classifiers' tcx links outlive the agent, the next
//! agent takes them over in place, and a pinned run that changes tc form leaves no other form.

use std::{path::Path, time::Duration};

use enforcer_tests::{
    Agent, NetNs,
    pinned::{
        self, POLICY, Setup, gnutls_blocked_by_name, gnutls_refused, ingress_attachments,
        our_tc_filters, stop_cleanly,
    },
    require_root, tcx,
};

/// A pinned agent with tc ingress and the classifiers attached as `tc_attach` says.
fn start_tc(ns: &NetNs, pin: &Path, socket: &Path, tc_attach: &str) -> Agent {
    let extra = ["--ingress", "tc", "--tc-attach", tc_attach];
    pinned::start(ns, POLICY, pin, socket, &extra)
}

/// The set-up of a tcx test, `None` (said why) where the kernel has no tcx hooks.
fn tcx_setup() -> Option<Setup> {
    require_root();
    if !tcx::supported() {
        eprintln!(
            "skipped: this kernel has no tcx hooks (Linux 6.6+), which --tc-attach tcx needs"
        );
        return None;
    }
    Some(Setup::new())
}

/// `--tc-attach tcx --pin`: the classifiers' tcx links are pinned, enforce while no agent runs
/// (SIGKILL), and the next agent swaps its programs into the very links (same link ids, new
/// programs, still one link per hook); no classic filter is added; detach removes them.
#[test]
fn pinned_tcx_links_survive_sigkill_and_are_taken_over_in_place() {
    let Some(s) = tcx_setup() else {
        return;
    };
    let start = || start_tc(&s.ns, &s.pin.dir, &s.socket, "tcx");
    let mut first = start();
    let before = tcx::links_on(&s.ns.host_if);
    let hooks: Vec<&str> = before.iter().map(|l| l.2).collect();
    assert_eq!(
        hooks,
        ["egress", "ingress"],
        "one tcx link per hook: {before:?}"
    );
    assert!(
        before.iter().all(|l| l.0 != 0),
        "links, not bare programs: {before:?}"
    );
    assert_eq!(
        our_tc_filters(&s.ns.host_if),
        0,
        "no classic filter with tcx"
    );
    gnutls_refused(&s.server, s.peer, "GNUTLS-TCX-FIRST", true);

    // SAFETY: signalling our own child.
    unsafe { libc::kill(first.pid() as libc::pid_t, libc::SIGKILL) };
    first.stop();
    assert_eq!(
        tcx::links_on(&s.ns.host_if),
        before,
        "the pinned tcx links stay"
    );
    gnutls_refused(&s.server, s.peer, "GNUTLS-TCX-NO-AGENT", false);

    let mut second = start();
    let after = tcx::links_on(&s.ns.host_if);
    assert_eq!(after.len(), 2, "still one tcx link per hook: {after:?}");
    for (old, new) in before.iter().zip(&after) {
        assert_eq!(
            (old.0, &old.2),
            (new.0, &new.2),
            "the same link, taken over"
        );
        assert_ne!(
            old.1, new.1,
            "the second agent's program in it: {before:?} {after:?}"
        );
    }
    assert_eq!(
        our_tc_filters(&s.ns.host_if),
        0,
        "no classic filter after the takeover"
    );
    gnutls_refused(&s.server, s.peer, "GNUTLS-TCX-SECOND", true);
    gnutls_blocked_by_name(&mut second);

    stop_cleanly(&mut second);
    assert_eq!(
        tcx::links_on(&s.ns.host_if).len(),
        2,
        "SIGTERM with --pin keeps them"
    );
    let out = s.pin.detach();
    assert!(
        out.status.success(),
        "detach: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !tcx::links_on(&s.ns.host_if).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        tcx::links_on(&s.ns.host_if),
        [],
        "detach removes the tcx links"
    );
}

/// A pinned run that changes the tc form takes the other form's leftovers away: netlink, then
/// tcx (the classic filters go), then netlink again (the pinned tcx links go); never both forms
/// of our classifier on a hook, and enforcement on throughout.
#[test]
fn a_pinned_run_that_changes_tc_form_removes_the_other_form() {
    let Some(s) = tcx_setup() else {
        return;
    };
    // A netlink run's tc ingress program pin (how `enforcer detach` finds the interface).
    let tcin_pin = s
        .pin
        .dir
        .join(format!("links/tcin_{}", tcx::ifindex(&s.ns.host_if)));
    let forms = |iface: &str| {
        (
            our_tc_filters(iface),
            ingress_attachments(iface).1,
            tcx::links_on(iface).len(),
            tcin_pin.exists(),
        )
    };
    for (run, form, want) in [
        (1, "netlink", (1, 1, 0, true)),
        (2, "tcx", (0, 0, 2, false)),
        (3, "netlink", (1, 1, 0, true)),
    ] {
        let mut agent = start_tc(&s.ns, &s.pin.dir, &s.socket, form);
        assert_eq!(
            forms(&s.ns.host_if),
            want,
            "run {run} ({form}): (egress filters, ingress filters, tcx links, tc ingress pin)"
        );
        gnutls_refused(&s.server, s.peer, &format!("GNUTLS-FORM-{run}"), true);
        stop_cleanly(&mut agent);
        assert_eq!(
            forms(&s.ns.host_if),
            want,
            "run {run}: SIGTERM with --pin keeps them"
        );
    }
    let out = s.pin.detach();
    assert!(
        out.status.success(),
        "detach: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
