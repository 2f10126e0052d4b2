//! The user registers the programs read by name (Go's `g`, instruction and stack pointers), per
//! architecture. The eBPF object is built
//! for the agent's architecture (aya-build passes `bpf_target_arch` from the agent's target, and
//! `aya_ebpf::bindings::pt_regs` is that architecture's user register layout: x86-64 `pt_regs`,
//! arm64 `user_pt_regs`, the first member of the kernel's arm64 `pt_regs`), so the same
//! object cannot serve both. Without the cfg (a plain `cargo clippy` of this crate) the layout is
//! x86-64's, as aya-ebpf's own build script then picks the host's.
//!
//! Go's register ABI keeps the running goroutine's `g` in R14 on amd64 and in R28 on arm64
//! (Go 1.17 / 1.18+). The agent does not probe Go binaries on arm64 yet (`go_enter`'s offsets
//! come from an x86-64 instruction decoder, see enforcer/src/libraries/go.rs), so on arm64
//! [`goroutine`] only serves the TCP hooks' lookup, which finds nothing.

use aya_ebpf::bindings::pt_regs;

/// The register holding Go's current goroutine (`g`) in `regs`.
#[inline(always)]
pub fn goroutine(regs: &pt_regs) -> &u64 {
    #[cfg(not(bpf_target_arch = "aarch64"))]
    return &regs.r14;
    #[cfg(bpf_target_arch = "aarch64")]
    return &regs.regs[28];
}

/// The instruction pointer in `regs` (at a return probe: the address returned to).
#[inline(always)]
pub fn instruction_pointer(regs: &pt_regs) -> u64 {
    #[cfg(not(bpf_target_arch = "aarch64"))]
    return regs.rip;
    #[cfg(bpf_target_arch = "aarch64")]
    return regs.pc;
}

/// The user stack pointer in `regs`.
#[inline(always)]
pub fn stack_pointer(regs: &pt_regs) -> u64 {
    #[cfg(not(bpf_target_arch = "aarch64"))]
    return regs.rsp;
    #[cfg(bpf_target_arch = "aarch64")]
    return regs.sp;
}
