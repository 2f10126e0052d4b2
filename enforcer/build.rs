//! Builds the eBPF object (`enforcer-ebpf`) with the nightly toolchain and bpf-linker, into
//! OUT_DIR, where `src/datapath/loader.rs` embeds it. `cargo xtask setup` installs what this needs.

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../enforcer-ebpf");
    println!("cargo:rerun-if-changed=../enforcer-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "enforcer-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "building the eBPF object failed ({e:#}); run `cargo xtask setup` \
             (nightly rust-src and bpf-linker are needed)"
        )
    })
}
