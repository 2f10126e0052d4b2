//! Builds the eBPF object (`enforcer-ebpf`) with the nightly toolchain and bpf-linker, into
//! OUT_DIR, where `src/datapath/loader.rs` embeds it. `cargo xtask setup` installs what this needs.
//!
//! aya-build runs a nested `cargo build` and prints every line of its output as
//! `cargo:warning=`, so a clean build showed `warning: enforcer@0.1.0:    Compiling ...` lines.
//! Its stdout is caught here instead: the build directives (`cargo:rerun-if-...`) go on to cargo,
//! the nested build's output goes to this script's stderr (shown by `cargo build -vv`, and in
//! full when the build fails) and to OUT_DIR/ebpf-build.log; only the compiler's own warnings
//! about the eBPF code stay warnings.

use std::{
    fs::File,
    io::{Read, Seek, Write},
    os::fd::AsRawFd,
    path::PathBuf,
};

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../enforcer-ebpf");
    println!("cargo:rerun-if-changed=../enforcer-common/src");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let (result, printed) = with_stdout_caught(&out_dir, || {
        aya_build::build_ebpf(
            [aya_build::Package {
                name: "enforcer-ebpf",
                root_dir: root,
                ..Default::default()
            }],
            aya_build::Toolchain::default(),
        )
    })?;
    let mut log = File::create(out_dir.join("ebpf-build.log"))?;
    // In a compiler diagnostic (from its `warning:`/`error` line to the blank line after it).
    let mut diagnostic = false;
    for line in printed.lines() {
        match line.strip_prefix("cargo:warning=") {
            Some(output) => {
                writeln!(log, "{output}")?;
                eprintln!("{output}");
                // The compiler's diagnostics about the eBPF code are worth a warning; cargo's
                // progress lines (`Compiling`, `Finished`) are not.
                diagnostic = match output.trim().is_empty() {
                    true => false,
                    false => {
                        diagnostic || output.starts_with("warning") || output.starts_with("error")
                    }
                };
                // On failure the whole output is in the failure report (this stderr) already.
                if diagnostic && result.is_ok() {
                    println!("cargo:warning={output}");
                }
            }
            None => println!("{line}"),
        }
    }
    result.map_err(|e| {
        anyhow::anyhow!(
            "building the eBPF object failed ({e:#}); its output is above (and in {}); run \
             `cargo xtask setup` (nightly rust-src and bpf-linker are needed)",
            out_dir.join("ebpf-build.log").display()
        )
    })
}

/// Runs `f` with this process's stdout going to a file; returns `f`'s result and what it printed.
fn with_stdout_caught<T>(
    out_dir: &std::path::Path,
    f: impl FnOnce() -> T,
) -> std::io::Result<(T, String)> {
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out_dir.join("aya-build.stdout"))?;
    std::io::stdout().flush()?;
    // SAFETY: plain descriptor calls on descriptors this process owns; stdout is flushed before
    // each switch, so no buffered line lands on the wrong one.
    let saved = unsafe { libc::dup(1) };
    if saved < 0 || unsafe { libc::dup2(file.as_raw_fd(), 1) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let result = f();
    std::io::stdout().flush()?;
    // SAFETY: as above; `saved` is ours and closed once restored.
    unsafe {
        libc::dup2(saved, 1);
        libc::close(saved);
    }
    let mut printed = String::new();
    file.rewind()?;
    file.read_to_string(&mut printed)?;
    Ok((result, printed))
}
