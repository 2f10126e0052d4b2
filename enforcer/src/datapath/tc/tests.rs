//! Needs root: veth pairs in the current namespace, raw bpf(2), `tc` from iproute2.
use super::*;
use crate::datapath::iface::tests::{VethGuard, sh, with_handle};
use std::future::Future;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

/// `r0 = -1 (TC_ACT_UNSPEC); exit` loaded as SCHED_CLS with a raw BPF_PROG_LOAD.
fn load_prog() -> OwnedFd {
    load_named(*b"enf_tc_test\0\0\0\0\0")
}

fn load_named(prog_name: [u8; 16]) -> OwnedFd {
    #[repr(C)]
    struct Insn(u8, u8, i16, i32); // opcode, dst/src registers, offset, immediate
    #[repr(C)]
    #[derive(Default)]
    struct ProgLoadAttr {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log: [u32; 4], // log_level, log_size, log_buf
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
    }
    // BPF_ALU64|BPF_MOV|BPF_K r0, -1 ; BPF_JMP|BPF_EXIT
    let insns = [Insn(0xb7, 0, 0, -1), Insn(0x95, 0, 0, 0)];
    let attr = ProgLoadAttr {
        prog_type: 3, // BPF_PROG_TYPE_SCHED_CLS
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: c"GPL".as_ptr() as u64,
        prog_name,
        ..Default::default()
    };
    let size = size_of::<ProgLoadAttr>();
    // SAFETY: `attr` and what it points to outlive the call; 5 is BPF_PROG_LOAD.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 5, &raw const attr, size) };
    assert!(fd >= 0, "BPF_PROG_LOAD: {}", io::Error::last_os_error());
    // SAFETY: a fresh fd owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

struct Ctx {
    dev: String,
    ifindex: u32,
    prog: OwnedFd,
    h: rtnetlink::Handle,
}
impl Ctx {
    async fn attach(&self) -> Result<Filter, TcError> {
        self.attach_to(Hook::Egress).await
    }
    async fn attach_to(&self, hook: Hook) -> Result<Filter, TcError> {
        let name = format!("enforcer_tc_{}", hook.name());
        attach(&self.h, self.ifindex, hook, self.prog.as_fd(), &name).await
    }
    fn filters(&self) -> String {
        sh(&format!("tc filter show dev {} egress", self.dev))
    }
    fn qdiscs(&self) -> String {
        sh(&format!("tc qdisc show dev {}", self.dev))
    }
    /// Adds another eBPF filter named `name` at pref 60, as another tool would.
    async fn add_other(&self, name: &str) {
        self.add_other_at(60, name).await
    }
    async fn add_other_at(&self, pref: u16, name: &str) {
        let mut msg = filter_msg(self.ifindex, Hook::Egress, pref, 1, ETH_P_ALL);
        msg.attributes.push(TcAttribute::Options(vec![
            TcOption::Bpf(TcFilterBpfOption::ProgFd(self.prog.as_raw_fd() as u32)),
            TcOption::Bpf(TcFilterBpfOption::ProgName(name.to_owned())),
            TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
        ]));
        let add = RouteNetlinkMessage::NewTrafficFilter(msg);
        let added = request(&self.h, add, NLM_F_CREATE | NLM_F_EXCL).await;
        added.expect("add other filter");
    }
}

/// Runs `test` against a fresh veth `<tag><pid>` (with `setup` shell commands run first).
fn on_veth<Fut: Future<Output = ()>>(tag: &str, setup: &[&str], test: impl FnOnce(Ctx) -> Fut) {
    let veth = VethGuard::new(tag);
    for cmd in setup {
        sh(&cmd.replace("DEV", &veth.0));
    }
    let (dev, ifindex, prog) = (veth.0.clone(), veth.ifindex(), load_prog());
    with_handle(|h| {
        test(Ctx {
            dev,
            ifindex,
            prog,
            h,
        })
    });
}

const HAS_CLSACT: &str = "qdisc clsact ffff:";

#[test]
fn attach_then_detach_leaves_nothing() {
    on_veth("enftca", &[], |c| async move {
        assert_eq!(
            remove_stale(&c.h, c.ifindex, Hook::Egress, "enforcer_")
                .await
                .expect("stale"),
            0
        );
        let f = c.attach().await.expect("attach");
        assert!(f.created_qdisc() && c.qdiscs().contains(HAS_CLSACT));
        let shown = c.filters();
        for want in [
            "protocol all pref 50 bpf",
            "handle 0x1 enforcer_tc_egress",
            "direct-action",
        ] {
            assert!(shown.contains(want), "missing {want:?} in:\n{shown}");
        }
        f.detach(&c.h).await.expect("detach");
        assert_eq!(c.filters().trim(), "");
        assert!(!c.qdiscs().contains(HAS_CLSACT), "clsact left behind");
    });
}

#[test]
fn ingress_and_egress_share_clsact_until_the_last_goes() {
    on_veth("enftcf", &[], |c| async move {
        let egress = c.attach().await.expect("attach egress");
        let ingress = c.attach_to(Hook::Ingress).await.expect("attach ingress");
        assert!(egress.created_qdisc() && !ingress.created_qdisc());
        let shown = sh(&format!("tc filter show dev {} ingress", c.dev));
        assert!(
            shown.contains("enforcer_tc_ingress") && shown.contains("direct-action"),
            "{shown}"
        );
        // The egress filter made the qdisc, but the ingress filter still uses it.
        egress.detach(&c.h).await.expect("detach egress");
        assert!(c.qdiscs().contains(HAS_CLSACT));
        assert_eq!(
            remove_stale(&c.h, c.ifindex, Hook::Ingress, "enforcer_")
                .await
                .expect("stale ingress"),
            1
        );
        drop(ingress);
        assert_eq!(
            sh(&format!("tc filter show dev {} ingress", c.dev)).trim(),
            ""
        );
    });
}

#[test]
fn detach_keeps_a_preexisting_clsact() {
    on_veth("enftcb", &["tc qdisc add dev DEV clsact"], |c| async move {
        let f = c.attach().await.expect("attach");
        assert!(!f.created_qdisc());
        f.detach(&c.h).await.expect("detach");
        assert_eq!(c.filters().trim(), "");
        assert!(
            c.qdiscs().contains(HAS_CLSACT),
            "pre-existing clsact was removed"
        );
    });
}

#[test]
fn detach_keeps_our_clsact_while_other_filters_use_it() {
    on_veth("enftcc", &[], |c| async move {
        let f = c.attach().await.expect("attach");
        c.add_other("someone_else").await;
        f.detach(&c.h).await.expect("detach");
        let shown = c.filters();
        assert!(
            shown.contains("someone_else") && !shown.contains("enforcer_tc"),
            "{shown}"
        );
        assert!(c.qdiscs().contains(HAS_CLSACT));
    });
}

#[test]
fn remove_stale_removes_only_our_prefix() {
    on_veth("enftcd", &[], |c| async move {
        // An agent killed with SIGKILL: the filter stays, nobody detaches it.
        drop(c.attach().await.expect("attach"));
        c.add_other("someone_else").await;
        let cbpf = "bpf bytecode '1,6 0 0 0,'"; // classic BPF, no name
        sh(&format!(
            "tc filter add dev {} egress pref 70 {cbpf}",
            c.dev
        ));
        let again = c.attach().await;
        assert!(
            matches!(again, Err(TcError::FilterExists { .. })),
            "{again:?}"
        );
        assert_eq!(
            remove_stale(&c.h, c.ifindex, Hook::Egress, "enforcer_")
                .await
                .expect("stale"),
            1
        );
        let shown = c.filters();
        assert!(!shown.contains("enforcer_tc"), "{shown}");
        assert!(
            shown.contains("someone_else") && shown.contains("pref 70"),
            "{shown}"
        );
        assert_eq!(
            remove_stale(&c.h, c.ifindex, Hook::Egress, "enforcer_")
                .await
                .expect("stale"),
            0
        );
        assert!(
            !c.attach()
                .await
                .expect("attach after cleanup")
                .created_qdisc()
        );
    });
}

#[test]
fn ingress_qdisc_in_the_way_is_explained() {
    on_veth(
        "enftce",
        &["tc qdisc add dev DEV ingress"],
        |c| async move {
            let err = c.attach().await.expect_err("ingress qdisc must be refused");
            assert!(matches!(err, TcError::IngressQdiscInTheWay { .. }), "{err}");
            assert!(err.to_string().contains(&c.dev), "{err}");
            assert!(c.qdiscs().contains("qdisc ingress"));
            let bad = attach(&c.h, c.ifindex, Hook::Egress, c.prog.as_fd(), "").await;
            assert!(matches!(bad, Err(TcError::InvalidName(_))));
        },
    );
}

/// The id of the tcx program called `name` on `dev`'s egress.
fn tcx_id(dev: &str, name: &str) -> u32 {
    let (_, programs) =
        aya::programs::SchedClassifier::query_tcx(dev, aya::programs::tc::TcAttachType::Egress)
            .expect("query tcx");
    let program = programs.iter().find(|p| p.name_as_str() == Some(name));
    program
        .unwrap_or_else(|| panic!("no tcx program {name}"))
        .id()
}

#[test]
fn what_runs_before_ours_is_listed_in_the_order_it_runs() {
    if !tcx::supported() {
        panic!("this kernel has no tcx hooks (Linux 6.6+): the test needs them");
    }
    on_veth("enftcx", &[], |c| async move {
        let ahead = |ours| ahead_of(&c.h, &c.dev, c.ifindex, Hook::Egress, ours);
        let ours = attach(&c.h, c.ifindex, Hook::Egress, c.prog.as_fd(), FILTER_NAME)
            .await
            .expect("attach");
        assert_eq!(ahead(Ours::Filter).await.expect("read"), vec![]);
        // A classic filter of a lower preference, as another tool adds it; and one of a
        // higher preference, which runs after ours.
        c.add_other_at(10, "other_filter").await;
        c.add_other_at(60, "later_filter").await;
        let matchall = Ahead {
            kind: AheadKind::Filter,
            name: "other_filter".into(),
            id: None,
            pref: Some(10),
        };
        assert_eq!(
            ahead(Ours::Filter).await.expect("read"),
            vec![matchall.clone()]
        );
        // A tcx program runs before every classic filter.
        let other = load_named(*b"other_tcx\0\0\0\0\0\0\0");
        let other_link = tcx::attach_first(other.as_fd(), c.ifindex, Hook::Egress).expect("tcx");
        let other_id = tcx_id(&c.dev, "other_tcx");
        let tcx_other = Ahead {
            kind: AheadKind::Tcx,
            name: "other_tcx".into(),
            id: Some(other_id),
            pref: None,
        };
        assert_eq!(
            ahead(Ours::Filter).await.expect("read"),
            vec![tcx_other.clone(), matchall]
        );
        // Ours as a tcx link, first: nothing runs before it; a program put first after it does.
        let mine = load_named(*b"mine_tcx\0\0\0\0\0\0\0\0");
        let mine_link = tcx::attach_first(mine.as_fd(), c.ifindex, Hook::Egress).expect("tcx");
        let mine_id = tcx_id(&c.dev, "mine_tcx");
        assert_eq!(ahead(Ours::Tcx(mine_id)).await.expect("read"), vec![]);
        let late = load_named(*b"late_tcx\0\0\0\0\0\0\0\0");
        let late_link = tcx::attach_first(late.as_fd(), c.ifindex, Hook::Egress).expect("tcx");
        let listed = ahead(Ours::Tcx(mine_id)).await.expect("read");
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(
            (listed[0].kind, listed[0].name.as_str()),
            (AheadKind::Tcx, "late_tcx")
        );
        // A link goes with its fd.
        drop((late_link, mine_link, other_link));
        let (_, left) = aya::programs::SchedClassifier::query_tcx(
            &c.dev,
            aya::programs::tc::TcAttachType::Egress,
        )
        .expect("query tcx");
        assert!(left.is_empty(), "tcx links left: {}", left.len());
        drop(tcx_other);
        ours.detach(&c.h).await.expect("detach");
    });
}
