#!/usr/bin/env python3
"""Sets the EEVDF slice (Linux 6.12+: sched_attr.sched_runtime for
SCHED_OTHER) of every thread of PID and of its child processes.

    bench/slice.py PID MICROSECONDS

An experiment knob for bench/lib.sh (SERVER_SLICE_US): a longer slice lets
the server run longer before a task it woke (the upstream, on the same
core) preempts it, without changing its share of the core.
"""

import ctypes
import os
import struct
import sys

SYS_SCHED_SETATTR = 314  # x86_64


def children(pid):
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(entry))
    return out


def main():
    pid, us = int(sys.argv[1]), int(sys.argv[2])
    libc = ctypes.CDLL(None, use_errno=True)
    # struct sched_attr (56 bytes): size, policy (SCHED_OTHER), flags, nice,
    # priority, runtime (the slice, ns), deadline, period, util_min, util_max.
    attr = ctypes.create_string_buffer(struct.pack("IIQiIQQQII", 56, 0, 0, 0, 0, us * 1000, 0, 0, 0, 0), 56)
    for proc in [pid] + children(pid):
        for tid in os.listdir(f"/proc/{proc}/task"):
            if libc.syscall(SYS_SCHED_SETATTR, int(tid), attr, 0) != 0:
                sys.exit(f"sched_setattr({tid}): errno {ctypes.get_errno()}")


if __name__ == "__main__":
    main()
