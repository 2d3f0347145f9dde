"""The server's system calls and context switches per answered request, from
`perf stat -x,` over one oha run: writes, reads, epoll_wait calls and
context switches, tab-separated.

    python3 bench/perf-per-request.py PERF.csv RUN.json

Writes count write, writev, sendto and sendmsg; reads count read, readv,
recvfrom and recvmsg (the calls that failed with EAGAIN too). Used by
bench/h2.sh (SYSCALLS=1).
"""
import json
import sys

perf_path, run_path = sys.argv[1], sys.argv[2]
codes = json.load(open(run_path)).get("statusCodeDistribution", {})
ok = max(int(codes.get("200", 0)), 1)
counts = {}
for line in open(perf_path):
    fields = line.strip().split(",")
    if len(fields) < 3 or line.startswith("#"):
        continue
    try:
        value = float(fields[0])
    except ValueError:  # "<not counted>"
        continue
    counts[fields[2].split(":")[-1]] = value
writes = sum(counts.get(f"sys_enter_{c}", 0) for c in ("write", "writev", "sendto", "sendmsg"))
reads = sum(counts.get(f"sys_enter_{c}", 0) for c in ("read", "readv", "recvfrom", "recvmsg"))
row = (writes, reads, counts.get("sys_enter_epoll_wait", 0), counts.get("context-switches", 0))
print("\t".join(f"{v / ok:.1f}" for v in row))
