#!/bin/sh
# The cbom_build seeds, in the target's input format (fuzz/fuzz_targets/cbom_build.rs): 16 bytes
# of serial, 8 of time (i64 LE), the host name, kernel release and agent mode, then records
# (0: a library, 1: a negotiated combination). Run from this directory: sh make.sh
set -e
python3 - <<'PY'
import struct
def s(x):
    b = x.encode(); return bytes([len(b)]) + b
def some(f): return b'\x01' + f
none = b'\x00'
def lib(i, fam, path, ver, sha, bid, mapped=()):
    opt = lambda v: some(s(v)) if v else none
    return b'\x00' + bytes([i]) + s(fam) + s(path) + opt(ver) + opt(sha) + opt(bid) \
        + bytes([len(mapped)]) + b''.join(s(m) for m in mapped)
def neg(lib, ver, suite, group, conns, shift, procs):
    out = b'\x01' + (some(bytes([lib])) if lib is not None else none)
    for v in (ver, suite, group):
        out += some(struct.pack('<H', v)) if v is not None else none
    return out + struct.pack('<I', conns) + bytes([shift, len(procs)]) + b''.join(s(p) for p in procs)
head = bytes(range(16)) + struct.pack('<q', 1_780_000_000) + s('vm') + some(s('6.18.44')) + s('audit')
# What tests/tests/cbom.rs's run saw: curl and s_client through the system libssl.
live = head + lib(3, 'openssl', '/usr/lib/x86_64-linux-gnu/libssl.so.3', '3.0.19',
                  '59d05945be216348714894906b60b8411e9d8dfdd414c38cb1024e3011bb9630',
                  'c0b9959017cf64b03131964573944fc72958bb2b',
                  ['/usr/lib/x86_64-linux-gnu/libssl.so.3', '/lib/x86_64-linux-gnu/libssl.so.3']) \
    + lib(2, 'gnutls', '/usr/lib/x86_64-linux-gnu/libgnutls.so.30.34.3', '3.7.9', None, None) \
    + neg(3, 0x0304, 0x1302, 0x001d, 1, 0, ['curl']) + neg(3, 0x0304, 0x1303, 0x0018, 1, 0, ['openssl'])
open('live-curl-s_client', 'wb').write(live)
# Unattributed, nothing read, unknown codes, a library no longer probed, a bad hash, huge counts.
odd = head + neg(None, None, None, None, 1, 0, ['nc']) \
    + neg(5, 0x7f1c, 0xabcd, 0x11ec, 0xffffffff, 31, ['', 'x']) \
    + neg(5, 0x0303, 0xc030, 0x0017, 7, 0, ['python3']) + lib(5, '', '', None, 'zz', None, [''])
open('unattributed-and-unknown', 'wb').write(odd)
PY
