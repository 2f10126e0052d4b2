//! `struct sock` field offsets from the running kernel's BTF.
//!
//! rustc emits no CO-RE relocations, so the eBPF programs cannot let the loader fix up the
//! offsets of the socket fields they read: userspace reads them from `/sys/kernel/btf/vmlinux` at
//! start and hands them to the programs as a global ([`enforcer_common::flow::SockOffsets`]).
//!
//! A small parser of the raw BTF format (header, type and string sections; see the kernel's
//! `Documentation/bpf/btf.rst`). The bytes are treated as untrusted: every read is bounds-checked,
//! every walk is depth-limited, and nothing panics.

use std::io::Read as _;

use enforcer_common::flow::SockOffsets;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// vmlinux BTF is a few MiB; refuse anything absurd rather than allocate it.
const MAX_BTF_BYTES: u64 = 256 << 20;
/// Nesting of anonymous structs/unions, and chains of typedef/const/volatile, followed at most.
const MAX_DEPTH: usize = 32;
/// Members looked at by one member search, anonymous members' members included: without a cap,
/// anonymous members that share a type make the search exponential in the nesting depth (found
/// while fuzzing, see docs/fuzzing.md). The kernel's `struct sock` needs a few hundred.
const MAX_MEMBERS_SEARCHED: usize = 1 << 16;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("no BTF at {VMLINUX_BTF}: enforcer needs a kernel built with CONFIG_DEBUG_INFO_BTF=y")]
    NoBtf,
    #[error("cannot read {VMLINUX_BTF}: {0}")]
    Io(#[source] std::io::Error),
    #[error("malformed BTF: {0}")]
    Malformed(String),
    #[error("kernel BTF has no struct {0}")]
    MissingStruct(&'static str),
    #[error("kernel BTF: struct {strukt} has no member {field}")]
    MissingField {
        strukt: &'static str,
        field: &'static str,
    },
    #[error("kernel too old: sk_protocol is a bitfield; enforcer needs Linux 5.6+")]
    ProtocolBitfield,
    #[error("kernel BTF: {field} is a bitfield; enforcer can only read whole fields")]
    Bitfield { field: &'static str },
    #[error("kernel BTF: {field} is {size} bytes, enforcer expects {expected}")]
    Size {
        field: &'static str,
        size: u64,
        expected: u64,
    },
    #[error("kernel BTF: {field} does not start on a byte boundary (bit {bits})")]
    Unaligned { field: &'static str, bits: u64 },
}

fn malformed(what: impl Into<String>) -> BtfError {
    BtfError::Malformed(what.into())
}

/// Offsets of the socket fields in the running kernel.
pub fn sock_offsets() -> Result<SockOffsets, BtfError> {
    sock_offsets_from(&read_vmlinux()?)
}

/// One whole, byte-aligned member to locate: `strukt.field` (also inside anonymous members),
/// expected to be `size` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldSpec {
    pub strukt: &'static str,
    pub field: &'static str,
    pub size: u64,
}

/// Byte offsets of `fields` in the running kernel, in the same order.
pub fn field_offsets(fields: &[FieldSpec]) -> Result<Vec<u32>, BtfError> {
    field_offsets_from(&read_vmlinux()?, fields)
}

/// Byte offsets of `fields` in raw BTF `bytes`, in the same order.
pub fn field_offsets_from(bytes: &[u8], fields: &[FieldSpec]) -> Result<Vec<u32>, BtfError> {
    let btf = Btf::parse(bytes)?;
    fields
        .iter()
        .map(|f| {
            let id = btf
                .find_struct(f.strukt)
                .ok_or(BtfError::MissingStruct(f.strukt))?;
            btf.field(id, f.strukt, f.field, f.size, 0)
        })
        .collect()
}

fn read_vmlinux() -> Result<Vec<u8>, BtfError> {
    let file = std::fs::File::open(VMLINUX_BTF).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => BtfError::NoBtf,
        _ => BtfError::Io(e),
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_BTF_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(BtfError::Io)?;
    if bytes.len() as u64 > MAX_BTF_BYTES {
        return Err(malformed(format!(
            "{VMLINUX_BTF} is larger than {MAX_BTF_BYTES} bytes"
        )));
    }
    Ok(bytes)
}

/// Offsets of the socket fields described by raw BTF `bytes` (the format of
/// `/sys/kernel/btf/vmlinux`).
pub fn sock_offsets_from(bytes: &[u8]) -> Result<SockOffsets, BtfError> {
    let btf = Btf::parse(bytes)?;
    let sock = btf
        .find_struct("sock")
        .ok_or(BtfError::MissingStruct("sock"))?;
    let common = btf
        .find_member(sock, "__sk_common", 0)?
        .ok_or(BtfError::MissingField {
            strukt: "sock",
            field: "__sk_common",
        })?;
    let common_ty = btf.resolve(common.type_id)?;
    if !matches!(btf.get(common_ty)?.kind, STRUCT) || common.bits % 8 != 0 {
        return Err(malformed(
            "sock.__sk_common is not a struct at a byte offset",
        ));
    }
    let base = common.bits / 8;
    let f = |name, size| btf.field(common_ty, "sock_common", name, size, base);
    Ok(SockOffsets {
        family: f("skc_family", 2)?,
        num: f("skc_num", 2)?,
        dport: f("skc_dport", 2)?,
        rcv_saddr: f("skc_rcv_saddr", 4)?,
        daddr: f("skc_daddr", 4)?,
        v6_rcv_saddr: f("skc_v6_rcv_saddr", 16)?,
        v6_daddr: f("skc_v6_daddr", 16)?,
        protocol: btf.field(sock, "sock", "sk_protocol", 2, 0)?,
        // `struct inet_sock` starts with `struct sock sk`: its offsets are offsets into the sock.
        sport: {
            let inet = btf
                .find_struct("inet_sock")
                .ok_or(BtfError::MissingStruct("inet_sock"))?;
            btf.field(inet, "inet_sock", "inet_sport", 2, 0)?
        },
    })
}

/// Where `struct inode` keeps its `ctime` in the running kernel: the offsets of the seconds (8
/// bytes) and nanoseconds (read as 4 bytes), and the layout's name. `Ok(None)`: none of the
/// known layouts (the caller goes on without a change counter).
pub fn inode_ctime_offsets() -> Result<Option<CtimeOffsets>, BtfError> {
    inode_ctime_offsets_from(&read_vmlinux()?)
}

/// The `ctime` of `struct inode`, as [`inode_ctime_offsets`] found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtimeOffsets {
    pub sec: u32,
    pub nsec: u32,
    /// The member(s) found: `i_ctime_sec`/`i_ctime_nsec` (Linux 6.11+), `__i_ctime` (6.6 to
    /// 6.10) or `i_ctime` (up to 6.5), the last two a `struct timespec64`.
    pub layout: &'static str,
}

/// [`inode_ctime_offsets`] from raw BTF `bytes`. Layouts tried newest first; a layout whose
/// members are missing or of another size is not this kernel's.
pub fn inode_ctime_offsets_from(bytes: &[u8]) -> Result<Option<CtimeOffsets>, BtfError> {
    let btf = Btf::parse(bytes)?;
    let inode = btf
        .find_struct("inode")
        .ok_or(BtfError::MissingStruct("inode"))?;
    if let (Ok(sec), Ok(nsec)) = (
        btf.field(inode, "inode", "i_ctime_sec", 8, 0),
        btf.field(inode, "inode", "i_ctime_nsec", 4, 0),
    ) {
        return Ok(Some(CtimeOffsets {
            sec,
            nsec,
            layout: "i_ctime_sec",
        }));
    }
    // `struct timespec64 { time64_t tv_sec; long tv_nsec; }`, checked rather than assumed.
    let Some(ts) = btf.find_struct("timespec64") else {
        return Ok(None);
    };
    let (Ok(tv_sec), Ok(tv_nsec)) = (
        btf.field(ts, "timespec64", "tv_sec", 8, 0),
        btf.field(ts, "timespec64", "tv_nsec", 8, 0),
    ) else {
        return Ok(None);
    };
    for layout in ["__i_ctime", "i_ctime"] {
        if let Ok(base) = btf.field(inode, "inode", layout, 16, 0) {
            return Ok(Some(CtimeOffsets {
                sec: base + tv_sec,
                nsec: base + tv_nsec,
                layout,
            }));
        }
    }
    Ok(None)
}

/// What the kernel's BTF names, for the feature checks (`datapath::features`): every enumerator
/// (of `bpf_func_id`, `bpf_attach_type`, `bpf_map_type`, ...) and the raw tracepoints, which
/// the kernel describes as typedefs `btf_trace_<name>`.
#[derive(Debug, Default)]
pub struct KernelNames {
    pub enumerators: std::collections::HashSet<String>,
    pub raw_tracepoints: std::collections::HashSet<String>,
}

pub fn kernel_names() -> Result<KernelNames, BtfError> {
    kernel_names_from(&read_vmlinux()?)
}

pub fn kernel_names_from(bytes: &[u8]) -> Result<KernelNames, BtfError> {
    let btf = Btf::parse(bytes)?;
    let mut names = KernelNames::default();
    let name = |off: u32| {
        let rest = btf.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        String::from_utf8_lossy(&rest[..end]).into_owned()
    };
    for t in &btf.types[1..] {
        match t.kind {
            // Enumerators: name offset first, then a 4 (ENUM) or 8 (ENUM64) byte value.
            ENUM | ENUM64 => {
                let step = if t.kind == ENUM { 8 } else { 12 };
                for e in t.extra.chunks_exact(step) {
                    if let Some(off) = u32_at(e, 0, btf.little) {
                        names.enumerators.insert(name(off));
                    }
                }
            }
            TYPEDEF => {
                if let Some(tp) = name(t.name_off).strip_prefix("btf_trace_") {
                    names.raw_tracepoints.insert(tp.to_string());
                }
            }
            _ => {}
        }
    }
    Ok(names)
}

const INT: u8 = 1;
const PTR: u8 = 2;
const ARRAY: u8 = 3;
const STRUCT: u8 = 4;
const UNION: u8 = 5;
const ENUM: u8 = 6;
const TYPEDEF: u8 = 8;
const VOLATILE: u8 = 9;
const CONST: u8 = 10;
const RESTRICT: u8 = 11;
const FLOAT: u8 = 16;
const TYPE_TAG: u8 = 18;
const ENUM64: u8 = 19;

#[derive(Clone, Copy)]
struct Type<'a> {
    name_off: u32,
    kind: u8,
    kind_flag: bool,
    size_or_type: u32,
    /// The kind-specific data after the 12-byte common part (members of a struct, ...).
    extra: &'a [u8],
}

struct Member {
    bits: u64,
    type_id: u32,
    bitfield_size: u32,
}

struct Btf<'a> {
    little: bool,
    strings: &'a [u8],
    /// Indexed by type id; id 0 (void) is a placeholder.
    types: Vec<Type<'a>>,
}

fn u32_at(b: &[u8], off: usize, little: bool) -> Option<u32> {
    let raw: [u8; 4] = b.get(off..off.checked_add(4)?)?.try_into().ok()?;
    Some(if little {
        u32::from_le_bytes(raw)
    } else {
        u32::from_be_bytes(raw)
    })
}

fn section<'a>(
    b: &'a [u8],
    start: usize,
    off: u32,
    len: u32,
    what: &str,
) -> Result<&'a [u8], BtfError> {
    let lo = start.checked_add(off as usize);
    let hi = lo.and_then(|lo| lo.checked_add(len as usize));
    match (lo, hi) {
        (Some(lo), Some(hi)) if hi <= b.len() => Ok(&b[lo..hi]),
        _ => Err(malformed(format!(
            "{what} section ({len} bytes at {off}) lies outside the data"
        ))),
    }
}

impl<'a> Btf<'a> {
    fn parse(b: &'a [u8]) -> Result<Self, BtfError> {
        let little = match b {
            [0x9f, 0xeb, ..] => true,
            [0xeb, 0x9f, ..] => false,
            _ => return Err(malformed("bad magic (expected 0xeB9F)")),
        };
        let hdr = |off| u32_at(b, off, little).ok_or_else(|| malformed("truncated header"));
        if b.get(2) != Some(&1) {
            return Err(malformed(format!("unsupported version {:?}", b.get(2))));
        }
        let hdr_len = hdr(4)? as usize;
        if hdr_len < 24 || hdr_len > b.len() {
            return Err(malformed(format!("bad header length {hdr_len}")));
        }
        let (type_off, type_len, str_off, str_len) = (hdr(8)?, hdr(12)?, hdr(16)?, hdr(20)?);
        let type_sec = section(b, hdr_len, type_off, type_len, "type")?;
        let strings = section(b, hdr_len, str_off, str_len, "string")?;

        let mut types = vec![Type {
            name_off: 0,
            kind: 0,
            kind_flag: false,
            size_or_type: 0,
            extra: &[],
        }];
        let mut pos = 0usize;
        while pos < type_sec.len() {
            let id = types.len();
            let word = |i: usize| {
                u32_at(type_sec, pos + 4 * i, little)
                    .ok_or_else(|| malformed(format!("type {id} truncated")))
            };
            let (name_off, info, size_or_type) = (word(0)?, word(1)?, word(2)?);
            let kind = ((info >> 24) & 0x1f) as u8;
            let vlen = (info & 0xffff) as usize;
            let extra_len = match kind {
                PTR | 7 | TYPEDEF | VOLATILE | CONST | RESTRICT | 12 | FLOAT | TYPE_TAG => 0,
                INT | 14 | 17 => 4,
                ARRAY => 12,
                STRUCT | UNION | 15 | ENUM64 => 12 * vlen,
                ENUM | 13 => 8 * vlen,
                k => return Err(malformed(format!("type {id} has unknown kind {k}"))),
            };
            let start = pos + 12;
            let extra = type_sec
                .get(start..start + extra_len)
                .ok_or_else(|| malformed(format!("type {id} truncated")))?;
            types.push(Type {
                name_off,
                kind,
                kind_flag: info >> 31 == 1,
                size_or_type,
                extra,
            });
            pos = start + extra_len;
        }
        Ok(Btf {
            little,
            strings,
            types,
        })
    }

    fn get(&self, id: u32) -> Result<&Type<'a>, BtfError> {
        self.types
            .get(id as usize)
            .ok_or_else(|| malformed(format!("type id {id} out of range")))
    }

    /// True if the name at `off` is exactly `want`. Reads `want.len() + 1` bytes, never the
    /// rest of a long or unterminated name: scanning each name for its NUL made a search over
    /// many types sharing one long name quadratic.
    fn name_is(&self, off: u32, want: &[u8]) -> Result<bool, BtfError> {
        let rest = self
            .strings
            .get(off as usize..)
            .ok_or_else(|| malformed("name outside strings"))?;
        Ok(rest.get(..want.len()) == Some(want) && rest.get(want.len()) == Some(&0))
    }

    fn find_struct(&self, name: &str) -> Option<u32> {
        (1..self.types.len()).find_map(|id| {
            let t = &self.types[id];
            let hit =
                t.kind == STRUCT && self.name_is(t.name_off, name.as_bytes()).is_ok_and(|x| x);
            hit.then_some(id as u32)
        })
    }

    /// Follows typedef / const / volatile / restrict / type tags.
    fn resolve(&self, mut id: u32) -> Result<u32, BtfError> {
        for _ in 0..MAX_DEPTH {
            match self.get(id)?.kind {
                TYPEDEF | VOLATILE | CONST | RESTRICT | TYPE_TAG => id = self.get(id)?.size_or_type,
                _ => return Ok(id),
            }
        }
        Err(malformed(format!("type chain through {id} too long")))
    }

    fn size_of(&self, id: u32, depth: usize) -> Result<u64, BtfError> {
        let t = self.get(self.resolve(id)?)?;
        match t.kind {
            INT | STRUCT | UNION | ENUM | ENUM64 | FLOAT => Ok(t.size_or_type.into()),
            PTR => Ok(8),
            ARRAY if depth < MAX_DEPTH => {
                let elem = u32_at(t.extra, 0, self.little).unwrap_or(0);
                let n = u32_at(t.extra, 8, self.little).unwrap_or(0);
                Ok(self.size_of(elem, depth + 1)?.saturating_mul(n.into()))
            }
            k => Err(malformed(format!("type {id} (kind {k}) has no size"))),
        }
    }

    /// The member `name` of struct/union `id`, looking into anonymous members (their offsets
    /// added up).
    fn find_member(&self, id: u32, name: &str, depth: usize) -> Result<Option<Member>, BtfError> {
        let mut budget = MAX_MEMBERS_SEARCHED;
        self.find_member_within(id, name, depth, &mut budget)
    }

    fn find_member_within(
        &self,
        id: u32,
        name: &str,
        depth: usize,
        budget: &mut usize,
    ) -> Result<Option<Member>, BtfError> {
        if depth > MAX_DEPTH {
            return Err(malformed("anonymous members nested too deep"));
        }
        let t = self.get(id)?;
        if !matches!(t.kind, STRUCT | UNION) {
            return Ok(None);
        }
        for m in t.extra.chunks_exact(12) {
            *budget = budget.checked_sub(1).ok_or_else(|| {
                malformed(format!(
                    "searched {MAX_MEMBERS_SEARCHED} members for {name}"
                ))
            })?;
            let word = |i: usize| u32_at(m, 4 * i, self.little).unwrap_or(0);
            let (name_off, type_id, offset) = (word(0), word(1), word(2));
            let (bits, bitfield_size) = match t.kind_flag {
                true => (u64::from(offset & 0xff_ffff), offset >> 24),
                false => (u64::from(offset), 0),
            };
            if self.name_is(name_off, name.as_bytes())? {
                return Ok(Some(Member {
                    bits,
                    type_id,
                    bitfield_size,
                }));
            }
            if self.name_is(name_off, b"")?
                && let Some(inner) =
                    self.find_member_within(self.resolve(type_id)?, name, depth + 1, budget)?
            {
                return Ok(Some(Member {
                    bits: bits + inner.bits,
                    ..inner
                }));
            }
        }
        Ok(None)
    }

    /// Byte offset (plus `base`) of a whole, byte-aligned member of `size` bytes.
    fn field(
        &self,
        id: u32,
        strukt: &'static str,
        field: &'static str,
        size: u64,
        base: u64,
    ) -> Result<u32, BtfError> {
        let m = self
            .find_member(id, field, 0)?
            .ok_or(BtfError::MissingField { strukt, field })?;
        let ty = self.get(self.resolve(m.type_id)?)?;
        // Without kind_flag, a bitfield is an INT member whose bit count is not its size.
        // INT data: bits 0-7 = bit count, 16-23 = bit offset.
        let int_data = (ty.kind == INT).then(|| u32_at(ty.extra, 0, self.little).unwrap_or(0));
        let narrow_int = int_data.is_some_and(|d| {
            u64::from(d & 0xff) != u64::from(ty.size_or_type) * 8 || (d >> 16) & 0xff != 0
        });
        if m.bitfield_size != 0 || narrow_int {
            return Err(match field {
                "sk_protocol" => BtfError::ProtocolBitfield,
                _ => BtfError::Bitfield { field },
            });
        }
        let actual = self.size_of(m.type_id, 0)?;
        if actual != size {
            return Err(BtfError::Size {
                field,
                size: actual,
                expected: size,
            });
        }
        if m.bits % 8 != 0 {
            return Err(BtfError::Unaligned {
                field,
                bits: m.bits,
            });
        }
        u32::try_from(base + m.bits / 8).map_err(|_| malformed(format!("{field} offset overflows")))
    }
}

#[cfg(test)]
mod tests;
