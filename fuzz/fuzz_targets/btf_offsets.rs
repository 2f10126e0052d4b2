//! `enforcer::datapath::btf::sock_offsets_from` on arbitrary bytes: the raw BTF parser must never panic,
//! hang or allocate without bound, whatever `/sys/kernel/btf/vmlinux` (or a file passed for
//! tests) holds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = enforcer::datapath::btf::sock_offsets_from(data);
});
