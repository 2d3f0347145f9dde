"""One oha run's JSON summary as a row: requests/s, p50, p99 and p99.9 in
µs, errors, and server CPU µs per answered request.

    python3 bench/oha.py RUN.json SERVER_CPU_US

Used by bench/sidecar.sh (fixed-rate variants) and bench/h2.sh.
"""
import json
import sys

path, cpu_us = sys.argv[1], int(sys.argv[2])
d = json.load(open(path))
s, p = d["summary"], d["latencyPercentiles"]
codes = d.get("statusCodeDistribution", {})
ok = int(codes.get("200", 0))
# "aborted due to deadline" are the requests still in flight when oha's
# duration ran out: not answered wrongly, only not yet. Not errors.
errors = sum(int(v) for k, v in codes.items() if k != "200") + sum(
    n for k, n in d.get("errorDistribution", {}).items() if k != "aborted due to deadline")
us = lambda k: int(round(p[k] * 1e6))
print(f"{s['requestsPerSec']:.1f}\t{us('p50')}\t{us('p99')}\t{us('p99.9')}\t{errors}\t{cpu_us / max(ok, 1):.1f}")
