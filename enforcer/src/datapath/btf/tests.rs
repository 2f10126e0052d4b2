use super::*;
use std::collections::HashMap;

/// Builds raw little-endian BTF for tests.
#[derive(Default)]
struct Builder {
    types: Vec<u8>,
    strings: Vec<u8>,
    next_id: u32,
}

impl Builder {
    fn new() -> Self {
        Builder {
            types: Vec::new(),
            strings: vec![0],
            next_id: 1,
        }
    }

    fn string(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        off
    }

    fn add(
        &mut self,
        name: &str,
        kind: u8,
        kind_flag: bool,
        vlen: u32,
        size: u32,
        extra: &[u32],
    ) -> u32 {
        let name = self.string(name);
        let info = (u32::from(kind_flag) << 31) | (u32::from(kind) << 24) | vlen;
        for w in [name, info, size].iter().chain(extra) {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
        self.next_id += 1;
        self.next_id - 1
    }

    fn int(&mut self, name: &str, size: u32) -> u32 {
        self.add(name, INT, false, 0, size, &[size * 8])
    }

    /// Members: (name, type, bit offset, bitfield size).
    fn compound(
        &mut self,
        kind: u8,
        name: &str,
        size: u32,
        members: &[(&str, u32, u32, u32)],
    ) -> u32 {
        let kflag = members.iter().any(|m| m.3 != 0);
        let mut extra = Vec::new();
        for &(n, ty, bits, bf) in members {
            extra.extend([
                self.string(n),
                ty,
                if kflag { bf << 24 | bits } else { bits },
            ]);
        }
        self.add(name, kind, kflag, members.len() as u32, size, &extra)
    }

    fn finish(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&[0x9f, 0xeb, 1, 0]);
        let t = self.types.len() as u32;
        for w in [24, 0, t, t, self.strings.len() as u32] {
            out.extend_from_slice(&u32::to_le_bytes(w));
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// A `struct sock` shaped like Linux 6.x's, with `sk_protocol` a bitfield if `old`.
fn synthetic(old: bool, dport_size: u32) -> Vec<u8> {
    let mut b = Builder::new();
    let u16_ = b.int("unsigned short", 2);
    let u32_ = b.int("unsigned int", 4);
    let be16 = b.add(
        "__be16",
        TYPEDEF,
        false,
        0,
        if dport_size == 2 { u16_ } else { u32_ },
        &[],
    );
    let be32 = b.add("__be32", TYPEDEF, false, 0, u32_, &[]);
    let arr = b.add("", ARRAY, false, 0, 0, &[u32_, u32_, 4]);
    let in6 = b.compound(STRUCT, "in6_addr", 16, &[("s6_addr32", arr, 0, 0)]);
    let addrs = b.compound(
        STRUCT,
        "",
        8,
        &[("skc_daddr", be32, 0, 0), ("skc_rcv_saddr", be32, 32, 0)],
    );
    let addrpair = b.compound(
        UNION,
        "",
        8,
        &[("skc_addrpair", u32_, 0, 0), ("", addrs, 0, 0)],
    );
    let ports = b.compound(
        STRUCT,
        "",
        4,
        &[("skc_dport", be16, 0, 0), ("skc_num", u16_, 16, 0)],
    );
    let c_ports = b.add("", CONST, false, 0, ports, &[]);
    let portpair = b.compound(
        UNION,
        "",
        4,
        &[("skc_portpair", u32_, 0, 0), ("", c_ports, 0, 0)],
    );
    let common = b.compound(
        STRUCT,
        "sock_common",
        136,
        &[
            ("", addrpair, 0, 0),
            ("skc_hash", u32_, 64, 0),
            ("", portpair, 96, 0),
            ("skc_family", u16_, 128, 0),
            ("skc_v6_daddr", in6, 448, 0),
            ("skc_v6_rcv_saddr", in6, 576, 0),
        ],
    );
    let proto = if old {
        ("sk_protocol", u32_, 2000, 8)
    } else {
        ("sk_protocol", u16_, 4112, 0)
    };
    let sock = b.compound(
        STRUCT,
        "sock",
        800,
        &[
            ("__sk_common", common, 0, 0),
            ("sk_type", u16_, 4096, 0),
            proto,
        ],
    );
    b.compound(
        STRUCT,
        "inet_sock",
        840,
        &[("sk", sock, 0, 0), ("inet_sport", be16, 6400, 0)],
    );
    b.finish()
}

#[test]
fn synthetic_sock_walks_anonymous_members() {
    let o = sock_offsets_from(&synthetic(false, 2)).unwrap();
    let want = SockOffsets {
        family: 16,
        num: 14,
        dport: 12,
        rcv_saddr: 4,
        daddr: 0,
        v6_rcv_saddr: 72,
        v6_daddr: 56,
        protocol: 514,
        sport: 800,
    };
    assert_eq!(o, want);
}

#[test]
fn layout_errors_are_explained() {
    let e = sock_offsets_from(&synthetic(true, 2)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "kernel too old: sk_protocol is a bitfield; enforcer needs Linux 5.6+"
    );
    let e = sock_offsets_from(&synthetic(false, 4)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "kernel BTF: skc_dport is 4 bytes, enforcer expects 2"
    );
    let mut b = Builder::new();
    let u16_ = b.int("unsigned short", 2);
    let common = b.compound(STRUCT, "sock_common", 4, &[("skc_family", u16_, 0, 0)]);
    b.compound(STRUCT, "sock", 8, &[("__sk_common", common, 0, 0)]);
    let e = sock_offsets_from(&b.finish()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "kernel BTF: struct sock_common has no member skc_num"
    );
    let e = sock_offsets_from(&Builder::new().finish()).unwrap_err();
    assert_eq!(e.to_string(), "kernel BTF has no struct sock");
}

#[test]
fn garbage_is_rejected_without_panic() {
    for (bytes, msg) in [
        (&b""[..], "malformed BTF: bad magic (expected 0xeB9F)"),
        (
            &b"\x9f\xeb\x01\x00\x18\x00"[..],
            "malformed BTF: truncated header",
        ),
        (
            &b"\x9f\xeb\x02\x00"[..],
            "malformed BTF: unsupported version Some(2)",
        ),
        (
            &b"ELF\x7f............................"[..],
            "malformed BTF: bad magic (expected 0xeB9F)",
        ),
    ] {
        assert_eq!(sock_offsets_from(bytes).unwrap_err().to_string(), msg);
    }
    let good = synthetic(false, 2);
    for len in 0..good.len() {
        assert!(
            sock_offsets_from(&good[..len]).is_err(),
            "prefix of {len} bytes parsed"
        );
    }
    // Flip every byte in turn (several values): whatever it yields, it must not panic.
    for i in 0..good.len() {
        for v in [0x00, 0x01, 0x7f, 0x80, 0xff] {
            let mut bad = good.clone();
            bad[i] = v;
            let _ = sock_offsets_from(&bad);
        }
    }
}

#[test]
fn cycles_are_bounded() {
    let mut b = Builder::new();
    // Type 1 is a typedef of itself; type 2 a struct whose anonymous member is itself.
    b.add("loop", TYPEDEF, false, 0, 1, &[]);
    b.add("sock", STRUCT, false, 1, 4, &[0, 2, 0]);
    assert!(
        sock_offsets_from(&b.finish())
            .unwrap_err()
            .to_string()
            .contains("too deep")
    );
    let mut b = Builder::new();
    b.add("loop", TYPEDEF, false, 0, 1, &[]);
    let n = b.string("__sk_common");
    b.add("sock", STRUCT, false, 1, 4, &[n, 1, 0]);
    assert!(
        sock_offsets_from(&b.finish())
            .unwrap_err()
            .to_string()
            .contains("too long")
    );
}

/// bpftool's raw dump: id → (kind, name, [(member, type id, bit offset)], referenced type id).
type Dump = HashMap<u32, (String, String, Vec<(String, u32, u64)>, u32)>;

fn bpftool_dump() -> Option<Dump> {
    let out = std::process::Command::new("bpftool")
        .args(["btf", "dump", "file", VMLINUX_BTF, "format", "raw"])
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "bpftool failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |line: &str, key: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.parse().ok())
    };
    let mut dump = Dump::new();
    let mut current = 0;
    for line in String::from_utf8(out.stdout).ok()?.lines() {
        let quoted = line.split('\'').nth(1).unwrap_or("").to_owned();
        if let Some(rest) = line.strip_prefix('[') {
            let (id, rest) = rest.split_once("] ")?;
            current = id.parse().ok()?;
            let kind = rest.split_whitespace().next()?.to_owned();
            let target = field(line, "type_id=").unwrap_or(0) as u32;
            dump.insert(current, (kind, quoted, Vec::new(), target));
        } else if let (Some(ty), Some(bits)) =
            (field(line, "type_id="), field(line, "bits_offset="))
        {
            dump.get_mut(&current)?.2.push((quoted, ty as u32, bits));
        }
    }
    Some(dump)
}

/// Independent walk over bpftool's view: bit offset of `name` within type `id`.
fn walk(dump: &Dump, mut id: u32, name: &str) -> Option<u64> {
    while matches!(
        dump[&id].0.as_str(),
        "TYPEDEF" | "CONST" | "VOLATILE" | "RESTRICT" | "TYPE_TAG"
    ) {
        id = dump[&id].3;
    }
    dump[&id]
        .2
        .iter()
        .find_map(|(n, ty, bits)| match n.as_str() {
            "(anon)" => walk(dump, *ty, name).map(|b| b + bits),
            n if n == name => Some(*bits),
            _ => None,
        })
}

#[test]
fn running_kernel_matches_bpftool() {
    if !std::path::Path::new(VMLINUX_BTF).exists() {
        assert!(matches!(sock_offsets(), Err(BtfError::NoBtf)));
        eprintln!("no {VMLINUX_BTF}: cross-check skipped");
        return;
    }
    let got = sock_offsets().unwrap();
    eprintln!("{VMLINUX_BTF}: {got:?}");
    let real = std::fs::read(VMLINUX_BTF).unwrap();
    for len in [0, 23, 24, 1000, real.len() / 2, real.len() - 1] {
        assert!(
            sock_offsets_from(&real[..len]).is_err(),
            "{len} bytes of {VMLINUX_BTF} parsed"
        );
    }
    let Some(dump) = bpftool_dump() else {
        eprintln!("bpftool not available: cross-check skipped");
        return;
    };
    let sock = *dump
        .iter()
        .find(|(_, t)| t.0 == "STRUCT" && t.1 == "sock")
        .unwrap()
        .0;
    let common = dump[&sock].2.iter().find(|m| m.0 == "__sk_common").unwrap();
    let c = |name| ((common.2 + walk(&dump, common.1, name).unwrap()) / 8) as u32;
    let want = SockOffsets {
        family: c("skc_family"),
        num: c("skc_num"),
        dport: c("skc_dport"),
        rcv_saddr: c("skc_rcv_saddr"),
        daddr: c("skc_daddr"),
        v6_rcv_saddr: c("skc_v6_rcv_saddr"),
        v6_daddr: c("skc_v6_daddr"),
        protocol: (walk(&dump, sock, "sk_protocol").unwrap() / 8) as u32,
        sport: {
            let inet = dump
                .iter()
                .find(|(_, t)| t.0 == "STRUCT" && t.1 == "inet_sock")
                .unwrap()
                .0;
            (walk(&dump, *inet, "inet_sport").unwrap() / 8) as u32
        },
    };
    assert_eq!(got, want);
}

/// Found while fuzzing (docs/fuzzing.md): anonymous members that share a type, nested 31 deep with
/// two members each, made the member search visit 2^31 paths. The search is capped instead.
#[test]
fn shared_anonymous_members_do_not_explode() {
    let mut b = Builder::new();
    let levels = 31;
    // Type ids are assigned in order: `sock` is 1, level i is i + 1, the innermost one last.
    let sock = b.compound(STRUCT, "sock", 8, &[("", 2, 0, 0), ("", 2, 0, 0)]);
    assert_eq!(sock, 1);
    for level in 2..=levels {
        let next = level + 1;
        b.compound(STRUCT, "", 8, &[("", next, 0, 0), ("", next, 0, 0)]);
    }
    let int = b.int("int", 4);
    b.compound(STRUCT, "", 8, &[("x", int, 0, 0)]);
    let started = std::time::Instant::now();
    let err = sock_offsets_from(&b.finish()).unwrap_err();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(err.to_string().contains("members for __sk_common"), "{err}");
}

/// Many types sharing one long name: each comparison reads the few bytes it compares, not the
/// whole name (a NUL search per type made this quadratic).
#[test]
fn long_shared_names_are_not_rescanned() {
    let mut b = Builder::new();
    let long = "s".repeat(1 << 20);
    let int = b.int(&long, 4);
    let name = b.types[..4].to_vec(); // the INT's name offset
    for _ in 0..20_000 {
        b.types.extend_from_slice(&name);
        b.types
            .extend_from_slice(&(u32::from(STRUCT) << 24).to_le_bytes());
        b.types.extend_from_slice(&4u32.to_le_bytes());
        b.next_id += 1;
    }
    let _ = int;
    let started = std::time::Instant::now();
    assert!(matches!(
        sock_offsets_from(&b.finish()),
        Err(BtfError::MissingStruct("sock"))
    ));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

/// The three layouts of `struct inode`'s `ctime` (up to 6.5, 6.6 to 6.10, 6.11+), and none.
#[test]
fn inode_ctime_in_every_layout() {
    let build = |members: &dyn Fn(u32, u32, u32) -> Vec<(&'static str, u32, u32, u32)>| {
        let mut b = Builder::new();
        let u32_t = b.int("u32", 4);
        let s64 = b.int("long long int", 8);
        let long = b.int("long int", 8);
        let ts = b.compound(
            STRUCT,
            "timespec64",
            16,
            &[("tv_sec", s64, 0, 0), ("tv_nsec", long, 64, 0)],
        );
        let m = members(u32_t, s64, ts);
        b.compound(STRUCT, "inode", 256, &m);
        b.finish()
    };
    let old = build(&|u, _, ts| vec![("i_mode", u, 0, 0), ("i_ctime", ts, 96 * 8, 0)]);
    let mid = build(&|u, _, ts| vec![("i_mode", u, 0, 0), ("__i_ctime", ts, 104 * 8, 0)]);
    let new = build(&|u, s, _| {
        vec![
            ("i_mode", u, 0, 0),
            ("i_ctime_sec", s, 112 * 8, 0),
            ("i_ctime_nsec", u, 132 * 8, 0),
        ]
    });
    let none = build(&|u, _, _| vec![("i_mode", u, 0, 0)]);
    let at = |bytes: &[u8]| {
        inode_ctime_offsets_from(bytes)
            .unwrap()
            .map(|o| (o.sec, o.nsec, o.layout))
    };
    assert_eq!(at(&old), Some((96, 104, "i_ctime")));
    assert_eq!(at(&mid), Some((104, 112, "__i_ctime")));
    assert_eq!(at(&new), Some((112, 132, "i_ctime_sec")));
    assert_eq!(at(&none), None);
}

/// The running kernel's `ctime` is found (the project's kernels all have one of the layouts).
#[test]
fn running_kernel_has_an_inode_ctime() {
    if !std::path::Path::new(VMLINUX_BTF).exists() {
        return;
    }
    let found = inode_ctime_offsets().unwrap();
    assert!(found.is_some(), "no inode ctime in {VMLINUX_BTF}");
}
