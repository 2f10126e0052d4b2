"""Runs Debian's /usr/sbin/sslsniff-bpfcc (bpfcc-tools 0.26) unmodified, as the peer reference of
`cargo xtask bench`, with one extra BCC compiler flag.

Why the flag: this kernel ships no headers, so BCC compiles against Debian's linux-headers-6.1
(BCC_KERNEL_SOURCE, set by the bench). Their <linux/minmax.h> min() expands, when __OPTIMIZE__
is defined, to a call of an undefined function that only exists to raise a compile-time type
error; BCC's rewriter rejects any such call ("cannot call non-static helper function"), so
sslsniff fails to compile there. `-U__OPTIMIZE__` turns the assertion into a no-op; the code
generated for the probes is unchanged. Usage: sslsniff.py [sslsniff options].
"""
import runpy
import sys

import bcc

_init = bcc.BPF.__init__


def _init_with_flag(self, *args, **kwargs):
    kwargs["cflags"] = list(kwargs.get("cflags") or []) + ["-U__OPTIMIZE__"]
    _init(self, *args, **kwargs)


bcc.BPF.__init__ = _init_with_flag
sys.argv = ["sslsniff-bpfcc"] + sys.argv[1:]
runpy.run_path("/usr/sbin/sslsniff-bpfcc", run_name="__main__")
