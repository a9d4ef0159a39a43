#!/usr/bin/env python3
"""Runs a command; prints "<wall seconds> <peak RSS MiB>" of it on stderr's last line.
usage: measure.py COMMAND [ARGS…]"""
import resource
import subprocess
import sys
import time

started = time.monotonic()
code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)
wall = time.monotonic() - started
peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(f"{wall:.3f} {peak_kib / 1024:.1f}")
sys.exit(code)
