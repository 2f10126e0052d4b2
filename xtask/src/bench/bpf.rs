//! The few `bpf(2)` commands the bench needs, as raw syscalls: find the running agent's XDP and tc
//! programs and its maps (through `/proc/PID/fdinfo`), run a program with
//! `BPF_PROG_TEST_RUN` + repeat, write and read map entries, and load an empty program as the
//! per-packet baseline.
//!
//! Raw syscalls rather than aya through the `enforcer` library: xtask must build before
//! `cargo xtask setup` has installed bpf-linker, and `enforcer`'s build script needs it.
//! Measuring the agent's own loaded programs is also exactly what enforces.

use std::{
    fs,
    os::fd::{FromRawFd, OwnedFd, RawFd},
};

use anyhow::{Context, Result, bail};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

pub const PROG_TYPE_SCHED_CLS: u32 = 3;
pub const PROG_TYPE_XDP: u32 = 6;
pub const PROG_TYPE_CGROUP_SKB: u32 = 8;
const MAP_TYPE_ARRAY: u32 = 2;
const MAP_TYPE_HASH: u32 = 1;
const MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const MAP_TYPE_LRU_HASH: u32 = 9;

/// `union bpf_attr` is at most this big for the commands used here; the kernel wants the unused
/// tail zeroed.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn get_u32(&self, off: usize) -> u32 {
        u32::from_ne_bytes(self.0[off..off + 4].try_into().expect("4 bytes"))
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> std::io::Result<libc::c_long> {
    // SAFETY: attr is a zero-padded bpf_attr of the layout `cmd` expects, and every pointer in it
    // points at memory that outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            std::mem::size_of::<Attr>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn fd_result(r: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel just returned this new descriptor to us.
    unsafe { OwnedFd::from_raw_fd(r as RawFd) }
}

/// The BPF objects one process holds, from its `/proc/PID/fdinfo`.
#[derive(Debug, Default)]
pub struct Held {
    /// (prog_type, prog_id)
    pub progs: Vec<(u32, u32)>,
    /// (map_type, key_size, value_size, max_entries, map_id)
    pub maps: Vec<(u32, u32, u32, u32, u32)>,
}

pub fn held_by(pid: u32) -> Result<Held> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut held = Held::default();
    for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {dir}"))? {
        let Ok(text) = fs::read_to_string(entry?.path()) else {
            continue;
        };
        let field = |name: &str| -> Option<u32> {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
        };
        if let (Some(t), Some(id)) = (field("prog_type:"), field("prog_id:")) {
            held.progs.push((t, id));
        } else if let (Some(t), Some(k), Some(v), Some(n), Some(id)) = (
            field("map_type:"),
            field("key_size:"),
            field("value_size:"),
            field("max_entries:"),
            field("map_id:"),
        ) {
            held.maps.push((t, k, v, n, id));
        }
    }
    Ok(held)
}

impl Held {
    /// The one packet program of this type (the agent loads one XDP and one tc program of its
    /// own, `enforcer_*`, beside their tail-called ServerHello readers, `posture_*`).
    pub fn prog(&self, prog_type: u32) -> Result<Prog> {
        self.prog_named(prog_type, "enforcer_")
    }

    /// The one program of this type whose name starts with `prefix`.
    pub fn prog_named(&self, prog_type: u32, prefix: &str) -> Result<Prog> {
        let mut found = Vec::new();
        for (_, id) in self.progs.iter().filter(|(t, _)| *t == prog_type) {
            let prog = Prog::by_id(*id)?;
            if prog.name()?.starts_with(prefix) {
                found.push(prog);
            }
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            n => {
                bail!("expected one program {prefix}* of type {prog_type} in the agent, found {n}")
            }
        }
    }

    /// `BLOCKLIST`: the hash map keyed by a 40-byte `FlowKey` with a 1-byte value.
    pub fn blocklist(&self) -> Result<Map> {
        self.map(
            |&(t, k, v, _, _)| t == MAP_TYPE_HASH && k == 40 && v == 1,
            "BLOCKLIST",
        )
    }

    /// `BLOCKLIST_HELD`: the array of two u64 (whether BLOCKLIST may hold entries).
    pub fn blocklist_held(&self) -> Result<Map> {
        self.map(
            |&(t, k, v, n, _)| t == MAP_TYPE_ARRAY && k == 4 && v == 8 && n == 2,
            "BLOCKLIST_HELD",
        )
    }

    /// `BLOCKLIST_BUCKETS`: the array of the kernel's `BLOCKLIST` entries per 4-tuple bucket.
    pub fn blocklist_buckets(&self) -> Result<Map> {
        let buckets = enforcer_common::flow::held::BUCKETS;
        self.map(
            |&(t, k, v, n, _)| t == MAP_TYPE_ARRAY && k == 4 && v == 8 && n == buckets,
            "BLOCKLIST_BUCKETS",
        )
    }

    /// `FLOWS`: the LRU hash keyed by a 40-byte `FlowKey` with a 16-byte `FlowState`.
    pub fn flows(&self) -> Result<Map> {
        self.map(
            |&(t, k, v, _, _)| t == MAP_TYPE_LRU_HASH && k == 40 && v == 16,
            "FLOWS",
        )
    }

    /// `HELLOS_SEEN`: the LRU hash keyed by a 40-byte `FlowKey` with a u32 sequence number.
    pub fn hellos_seen(&self) -> Result<Map> {
        self.map(
            |&(t, k, v, _, _)| t == MAP_TYPE_LRU_HASH && k == 40 && v == 4,
            "HELLOS_SEEN",
        )
    }

    /// `POSTURES`: the LRU hash keyed by a 40-byte `FlowKey` with an 8-byte `Posture`.
    pub fn postures(&self) -> Result<Map> {
        self.map(
            |&(t, k, v, _, _)| t == MAP_TYPE_LRU_HASH && k == 40 && v == 8,
            "POSTURES",
        )
    }

    /// `STATS`: the per-CPU array of u64 counters.
    pub fn stats(&self, entries: u32) -> Result<Map> {
        self.map(
            |&(t, k, v, n, _)| t == MAP_TYPE_PERCPU_ARRAY && k == 4 && v == 8 && n == entries,
            "STATS",
        )
    }

    fn map(&self, pred: impl Fn(&(u32, u32, u32, u32, u32)) -> bool, name: &str) -> Result<Map> {
        // By id: the agent may hold one map through several fds (aya's and its live handles).
        let mut found: Vec<_> = self.maps.iter().filter(|m| pred(m)).collect();
        found.sort_by_key(|m| m.4);
        found.dedup_by_key(|m| m.4);
        // Two maps of one shape (POSTURES and WHO_WAIT are both LRU hashes of a flow key to 8
        // bytes): the name tells them apart.
        if found.len() > 1 {
            found.retain(|m| {
                Map::by_id(m.4, m.1, m.2)
                    .and_then(|map| map.name())
                    .is_ok_and(|n| n == name)
            });
        }
        match found[..] {
            [m] => Map::by_id(m.4, m.1, m.2),
            _ => bail!(
                "expected one {name} map in the agent, found {}",
                found.len()
            ),
        }
    }
}

pub struct Prog {
    fd: OwnedFd,
}

impl Prog {
    fn by_id(id: u32) -> Result<Prog> {
        let mut a = Attr::new();
        a.u32(0, id);
        let r = bpf(BPF_PROG_GET_FD_BY_ID, &mut a).with_context(|| format!("program id {id}"))?;
        Ok(Prog { fd: fd_result(r) })
    }

    /// The program's name (`bpf_prog_info.name`, at most 15 bytes).
    fn name(&self) -> Result<String> {
        use std::os::fd::AsRawFd;
        let mut info = [0u8; 256];
        let mut a = Attr::new();
        a.u32(0, self.fd.as_raw_fd() as u32)
            .u32(4, info.len() as u32)
            .u64(8, info.as_mut_ptr() as u64);
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a).context("BPF_OBJ_GET_INFO_BY_FD")?;
        let name = &info[64..80];
        let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
        Ok(String::from_utf8_lossy(&name[..end]).into_owned())
    }

    /// `r0 = retval; exit`: the least any program of this type costs.
    pub fn trivial(prog_type: u32, retval: i32) -> Result<Prog> {
        let mut insns = [0u8; 16];
        insns[0] = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K, dst r0
        insns[4..8].copy_from_slice(&retval.to_le_bytes());
        insns[8] = 0x95; // BPF_JMP | BPF_EXIT
        let license = b"GPL\0";
        let mut a = Attr::new();
        a.u32(0, prog_type)
            .u32(4, 2)
            .u64(8, insns.as_ptr() as u64)
            .u64(16, license.as_ptr() as u64);
        let name = b"bench_empty";
        a.0[48..48 + name.len()].copy_from_slice(name);
        let r = bpf(BPF_PROG_LOAD, &mut a).context("loading the empty baseline program")?;
        Ok(Prog { fd: fd_result(r) })
    }

    /// Runs the program `repeat` times on `packet`; returns (return value, mean ns per run).
    pub fn test_run(&self, packet: &[u8], repeat: u32) -> Result<(u32, u32)> {
        use std::os::fd::AsRawFd;
        let mut out = vec![0u8; packet.len() + 256];
        let mut a = Attr::new();
        a.u32(0, self.fd.as_raw_fd() as u32)
            .u32(8, packet.len() as u32)
            .u32(12, out.len() as u32)
            .u64(16, packet.as_ptr() as u64)
            .u64(24, out.as_mut_ptr() as u64)
            .u32(32, repeat);
        bpf(BPF_PROG_TEST_RUN, &mut a).context("BPF_PROG_TEST_RUN")?;
        Ok((a.get_u32(4), a.get_u32(36)))
    }
}

pub struct Map {
    fd: OwnedFd,
    key_size: u32,
    value_size: u32,
}

impl Map {
    /// The map's name (`bpf_map_info.name`, at most 15 bytes).
    fn name(&self) -> Result<String> {
        use std::os::fd::AsRawFd;
        let mut info = [0u8; 128];
        let mut a = Attr::new();
        a.u32(0, self.fd.as_raw_fd() as u32)
            .u32(4, info.len() as u32)
            .u64(8, info.as_mut_ptr() as u64);
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a).context("BPF_OBJ_GET_INFO_BY_FD")?;
        let name = &info[24..40];
        let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
        Ok(String::from_utf8_lossy(&name[..end]).into_owned())
    }

    fn by_id(id: u32, key_size: u32, value_size: u32) -> Result<Map> {
        let mut a = Attr::new();
        a.u32(0, id);
        let r = bpf(BPF_MAP_GET_FD_BY_ID, &mut a).with_context(|| format!("map id {id}"))?;
        Ok(Map {
            fd: fd_result(r),
            key_size,
            value_size,
        })
    }

    fn elem(&self, cmd: libc::c_long, key: &[u8], value: Option<&mut [u8]>) -> Result<()> {
        use std::os::fd::AsRawFd;
        if key.len() != self.key_size as usize {
            bail!(
                "key is {} bytes, the map wants {}",
                key.len(),
                self.key_size
            );
        }
        let mut a = Attr::new();
        a.u32(0, self.fd.as_raw_fd() as u32)
            .u64(8, key.as_ptr() as u64);
        if let Some(v) = value {
            a.u64(16, v.as_mut_ptr() as u64);
        }
        bpf(cmd, &mut a)?;
        Ok(())
    }

    pub fn insert(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let mut v = value.to_vec();
        if v.len() != self.value_size as usize {
            bail!(
                "value is {} bytes, the map wants {}",
                v.len(),
                self.value_size
            );
        }
        self.elem(BPF_MAP_UPDATE_ELEM, key, Some(&mut v))
            .context("map update")
    }

    pub fn remove(&self, key: &[u8]) -> Result<()> {
        self.elem(BPF_MAP_DELETE_ELEM, key, None)
            .context("map delete")
    }

    /// Number of entries (walks the keys with BPF_MAP_GET_NEXT_KEY; a map changing meanwhile
    /// gives an approximate count).
    pub fn count(&self) -> Result<u64> {
        use std::os::fd::AsRawFd;
        let mut key = vec![0u8; self.key_size as usize];
        let mut next = vec![0u8; self.key_size as usize];
        let mut n = 0u64;
        let mut first = true;
        loop {
            let mut a = Attr::new();
            a.u32(0, self.fd.as_raw_fd() as u32)
                .u64(8, if first { 0 } else { key.as_ptr() as u64 })
                .u64(16, next.as_mut_ptr() as u64);
            match bpf(BPF_MAP_GET_NEXT_KEY, &mut a) {
                Ok(_) => {
                    n += 1;
                    std::mem::swap(&mut key, &mut next);
                    first = false;
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(n),
                Err(e) => return Err(e).context("map get_next_key"),
            }
            if n > 10_000_000 {
                bail!("map walk does not end");
            }
        }
    }

    /// One entry of an array of u64.
    pub fn u64_at(&self, index: u32) -> Result<u64> {
        let mut v = [0u8; 8];
        self.elem(BPF_MAP_LOOKUP_ELEM, &index.to_ne_bytes(), Some(&mut v))
            .context("map lookup")?;
        Ok(u64::from_ne_bytes(v))
    }

    /// One entry of a per-CPU array of u64, summed over the possible CPUs.
    pub fn percpu_sum(&self, index: u32) -> Result<u64> {
        let cpus = possible_cpus()?;
        let mut v = vec![0u8; cpus * 8];
        self.elem(BPF_MAP_LOOKUP_ELEM, &index.to_ne_bytes(), Some(&mut v))
            .context("map lookup")?;
        Ok(v.chunks(8)
            .map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")))
            .sum())
    }
}

/// Number of possible CPUs (`/sys/devices/system/cpu/possible`, e.g. `0-1`): the per-CPU value
/// size the kernel copies out.
fn possible_cpus() -> Result<usize> {
    let text = fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let mut n = 0;
    for part in text.trim().split(',') {
        n += match part.split_once('-') {
            Some((a, b)) => b.parse::<usize>()? - a.parse::<usize>()? + 1,
            None => 1,
        };
    }
    Ok(n)
}

/// `enforcer_common::FlowKey` in its `#[repr(C)]` layout: family, 3 pad bytes, local port,
/// remote port (host order), local address, remote address (16 bytes each, network order).
pub fn flow_key(local: std::net::SocketAddr, remote: std::net::SocketAddr) -> [u8; 40] {
    let mut k = [0u8; 40];
    let addr = |ip: std::net::IpAddr| -> [u8; 16] {
        let mut a = [0u8; 16];
        match ip {
            std::net::IpAddr::V4(v4) => a[..4].copy_from_slice(&v4.octets()),
            std::net::IpAddr::V6(v6) => a = v6.octets(),
        }
        a
    };
    k[0] = if local.is_ipv4() { 4 } else { 6 };
    k[4..6].copy_from_slice(&local.port().to_ne_bytes());
    k[6..8].copy_from_slice(&remote.port().to_ne_bytes());
    k[8..24].copy_from_slice(&addr(local.ip()));
    k[24..40].copy_from_slice(&addr(remote.ip()));
    k
}

/// The `BLOCKLIST_BUCKETS` slot of the flow `flow_key(local, remote)` stands for.
pub fn bucket_of(local: std::net::SocketAddr, remote: std::net::SocketAddr) -> u32 {
    let k = flow_key(local, remote);
    let mut flow = enforcer_common::flow::FlowKey {
        family: k[0],
        local_port: local.port(),
        remote_port: remote.port(),
        ..Default::default()
    };
    flow.local_addr.copy_from_slice(&k[8..24]);
    flow.remote_addr.copy_from_slice(&k[24..40]);
    enforcer_common::flow::held::bucket_of(&flow)
}

/// An Ethernet + IPv4/IPv6 + TCP (PSH|ACK) frame with `payload` zero bytes, from `src` to `dst`.
pub fn tcp_frame(src: std::net::SocketAddr, dst: std::net::SocketAddr, payload: usize) -> Vec<u8> {
    tcp_frame_with(src, dst, &vec![0; payload])
}

/// The same frame carrying `payload`.
pub fn tcp_frame_with(
    src: std::net::SocketAddr,
    dst: std::net::SocketAddr,
    payload: &[u8],
) -> Vec<u8> {
    use std::net::IpAddr;
    let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
    let tcp_len = 20 + payload.len();
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&[0x08, 0x00]);
            let total = (20 + tcp_len) as u16;
            f.extend_from_slice(&[0x45, 0]);
            f.extend_from_slice(&total.to_be_bytes());
            f.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&[0x86, 0xdd]);
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(tcp_len as u16).to_be_bytes());
            f.extend_from_slice(&[6, 64]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        _ => panic!("mixed address families"),
    }
    f.extend_from_slice(&src.port().to_be_bytes());
    f.extend_from_slice(&dst.port().to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

/// A TLS 1.3 ServerHello record as OpenSSL sends one: TLS_AES_128_GCM_SHA256, an X25519 key
/// share, then `supported_versions` (122 bytes).
pub fn server_hello_record() -> Vec<u8> {
    let mut exts = vec![0x00, 0x33, 0x00, 0x24, 0x00, 0x1d, 0x00, 0x20];
    exts.extend_from_slice(&[0x5a; 32]);
    exts.extend_from_slice(&[0x00, 0x2b, 0x00, 0x02, 0x03, 0x04]);
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0x33; 32]);
    body.push(32);
    body.extend_from_slice(&[0x17; 32]);
    body.extend_from_slice(&[0x13, 0x01, 0x00]);
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut record = vec![0x16, 0x03, 0x03];
    record.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
    record.push(0x02);
    record.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    record.extend_from_slice(&body);
    record
}

/// A TLS 1.3 ClientHello record like OpenSSL 3.0's: 16 cipher suites, server name, groups,
/// signature schemes, ALPN `h2`, `supported_versions`, an X25519 key share (240 bytes).
pub fn client_hello_record() -> Vec<u8> {
    fn ext(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut e = kind.to_be_bytes().to_vec();
        e.extend_from_slice(&(body.len() as u16).to_be_bytes());
        e.extend_from_slice(body);
        e
    }
    let u16s = |v: &[u16]| -> Vec<u8> { v.iter().flat_map(|x| x.to_be_bytes()).collect() };
    let prefixed = |b: Vec<u8>| -> Vec<u8> {
        let mut out = (b.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&b);
        out
    };
    let suites = [
        0x1302, 0x1303, 0x1301, 0xc02c, 0xc030, 0x009f, 0xcca9, 0xcca8, 0xccaa, 0xc02b, 0xc02f,
        0x009e, 0xc024, 0xc028, 0x006b, 0x00ff,
    ];
    let name = b"bench.example";
    let mut sni = vec![0];
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name);
    let mut share = 0x001d_u16.to_be_bytes().to_vec();
    share.extend_from_slice(&32u16.to_be_bytes());
    share.extend_from_slice(&[0x5a; 32]);
    let mut exts = ext(0x0000, &prefixed(sni));
    exts.extend(ext(
        0x000a,
        &prefixed(u16s(&[0x001d, 0x0017, 0x001e, 0x0019, 0x0018])),
    ));
    exts.extend(ext(0x000b, &[1, 0]));
    exts.extend(ext(
        0x000d,
        &prefixed(u16s(&[0x0403, 0x0503, 0x0603, 0x0807, 0x0804, 0x0401])),
    ));
    exts.extend(ext(0x0010, &prefixed(b"\x02h2".to_vec())));
    exts.extend(ext(0x002b, &[2, 0x03, 0x04]));
    exts.extend(ext(0x002d, &[1, 1]));
    exts.extend(ext(0x0033, &prefixed(share)));
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0x42; 32]);
    body.push(32);
    body.extend_from_slice(&[0x17; 32]);
    body.extend(prefixed(u16s(&suites)));
    body.extend_from_slice(&[1, 0]);
    body.extend(prefixed(exts));
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
    record.push(0x01);
    record.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    record.extend_from_slice(&body);
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_hello_record_is_consistent() {
        let r = client_hello_record();
        assert_eq!(r[0], 0x16);
        assert_eq!(u16::from_be_bytes([r[3], r[4]]) as usize, r.len() - 5);
        let hs = u32::from_be_bytes([0, r[6], r[7], r[8]]) as usize;
        assert_eq!(hs, r.len() - 9);
        assert!((200..400).contains(&r.len()), "{}", r.len());
    }

    #[test]
    fn frames_and_keys_have_the_wire_layout() {
        let a: std::net::SocketAddr = "192.0.2.1:40000".parse().unwrap();
        let b: std::net::SocketAddr = "198.51.100.1:443".parse().unwrap();
        let f = tcp_frame(a, b, 10);
        assert_eq!(f.len(), 14 + 20 + 20 + 10);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(&f[26..30], &[192, 0, 2, 1]);
        assert_eq!(u16::from_be_bytes([f[34], f[35]]), 40000);
        let k = flow_key(a, b);
        assert_eq!(k[0], 4);
        assert_eq!(u16::from_ne_bytes([k[4], k[5]]), 40000);
        assert_eq!(&k[24..28], &[198, 51, 100, 1]);
        let v6 = tcp_frame(
            "[2001:db8::1]:1".parse().unwrap(),
            "[2001:db8::2]:2".parse().unwrap(),
            0,
        );
        assert_eq!(v6.len(), 14 + 40 + 20);
    }
}
