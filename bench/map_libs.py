"""Maps each shared library given as an argument into this process (ctypes.CDLL), prints
"loaded N", then runs until killed, so that enforcer's /proc/*/maps scan finds them all.
"""
import ctypes
import signal
import sys

handles = [ctypes.CDLL(path) for path in sys.argv[1:]]
print(f"loaded {len(handles)}", flush=True)
signal.sigwait([signal.SIGTERM, signal.SIGINT])
