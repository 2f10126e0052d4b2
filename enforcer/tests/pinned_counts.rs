//! Taking over a pinned `BLOCKLIST` whose entries no count covers: the packet programs skip
//! `BLOCKLIST` while `BLOCKLIST_HELD[USERSPACE]` is 0 and the packet's `BLOCKLIST_BUCKETS` slot
//! is 0, so a pin directory from a version that had either map missing must make the loader set
//! the USERSPACE flag (the lookup is then always made). Without that, the blocked flows of such
//! a directory would pass. Likewise a pinned `FLOW_HEADS` without `HEAD_BUCKETS`: its heads are
//! not counted, so the loader leaves it behind and pins a new, empty one. Real object, real
//! bpffs; needs root.

use aya::maps::{Array, HashMap};
use enforcer::datapath::{
    loader::{self, LoadOptions},
    pin::{self, PinDir},
};
use enforcer_common::{
    flow::{FlowKey, held},
    hello::{FLOW_HEADS, FlowHead, HEAD_BUCKETS},
    maps,
};

fn userspace_flag(ebpf: &aya::Ebpf) -> u64 {
    let a: Array<_, u64> = Array::try_from(ebpf.map(maps::BLOCKLIST_HELD).unwrap()).unwrap();
    a.get(&held::USERSPACE, 0).unwrap()
}

fn load(dir: &PinDir) -> aya::Ebpf {
    let offsets =
        enforcer::datapath::btf::sock_offsets().expect("reading struct sock offsets from BTF");
    loader::load_with(
        &offsets,
        &LoadOptions {
            pin: Some(dir.clone()),
            ..LoadOptions::default()
        },
    )
    .expect("loading the eBPF object with pinned maps")
}

/// Removes the pin directory however the test ends.
struct Removed(PinDir);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = pin::remove_all(&self.0);
    }
}

#[test]
fn a_pinned_blocklist_without_its_counts_is_always_looked_up() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "loads eBPF maps: run as root"
    );
    for missing in [maps::BLOCKLIST_BUCKETS, maps::BLOCKLIST_HELD] {
        let root = std::path::PathBuf::from(format!(
            "/sys/fs/bpf/enforcer-test-counts-{}-{missing}",
            std::process::id()
        ));
        let dir = PinDir::create(&root).expect("a pin directory on bpffs");
        let _removed = Removed(dir.clone());
        // A complete directory: nothing to mark.
        drop(load(&dir));
        assert!(dir.has_map(maps::BLOCKLIST) && dir.has_map(missing));
        let again = load(&dir);
        assert_eq!(
            userspace_flag(&again),
            0,
            "all counts pinned: the flag stays clear"
        );
        drop(again);

        // As an older version left it: the blocklist, but not this count.
        std::fs::remove_file(dir.map_path(missing)).expect("unpin the count");
        let taken_over = load(&dir);
        assert_eq!(
            userspace_flag(&taken_over),
            1,
            "{missing} missing: the blocklist is looked up for every packet"
        );
        drop(taken_over);
    }
}

fn heads(ebpf: &aya::Ebpf) -> usize {
    let m: HashMap<_, FlowKey, FlowHead> =
        HashMap::try_from(ebpf.map(FLOW_HEADS).unwrap()).unwrap();
    m.keys().count()
}

#[test]
fn a_pinned_flow_heads_without_its_counts_is_replaced() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "loads eBPF maps: run as root"
    );
    let root = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/enforcer-test-heads-{}",
        std::process::id()
    ));
    let dir = PinDir::create(&root).expect("a pin directory on bpffs");
    let _removed = Removed(dir.clone());
    let mut first = load(&dir);
    let mut m: HashMap<_, FlowKey, FlowHead> =
        HashMap::try_from(first.map_mut(FLOW_HEADS).unwrap()).unwrap();
    let head = FlowHead {
        base: 1,
        count: 0,
        retries: 0,
        _pad: [0; 3],
        bytes: [0; enforcer_common::hello::HEAD_BUFFER],
    };
    m.insert(FlowKey::default(), head, 0).unwrap();
    drop(first);
    assert_eq!(heads(&load(&dir)), 1, "counts pinned: the heads are kept");

    std::fs::remove_file(dir.map_path(HEAD_BUCKETS)).expect("unpin the count");
    let taken_over = load(&dir);
    assert_eq!(heads(&taken_over), 0, "uncounted heads are not taken over");
    assert!(dir.has_map(FLOW_HEADS) && dir.has_map(HEAD_BUCKETS));
}
