"""The floor of any uprobe-based TLS observer on this machine: empty BPF programs as uprobe and
uretprobe on SSL_read and SSL_write of the system libssl (the functions sslsniff probes, and
that enforcer probes too). Prints "ready" once attached, then runs until killed.
Needs BCC_KERNEL_SOURCE like sslsniff.py.
"""
import signal
import sys

from bcc import BPF

b = BPF(text="int on_entry(void *ctx) { return 0; }\nint on_return(void *ctx) { return 0; }\n")
for sym in ("SSL_write", "SSL_read"):
    b.attach_uprobe(name="ssl", sym=sym, fn_name="on_entry")
    b.attach_uretprobe(name="ssl", sym=sym, fn_name="on_return")
print("ready", flush=True)
signal.sigwait([signal.SIGTERM, signal.SIGINT])
sys.exit(0)
