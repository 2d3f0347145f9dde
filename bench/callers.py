#!/usr/bin/env python3
"""Calls per request into a function, by caller, from a callgrind dump
(bench/profile.sh with CALLERS=NAME).

    callers.py CALLGRIND_OUT NAME REQUESTS

Every call from a function into one whose name contains NAME is counted
under the caller; the counts are divided by REQUESTS and printed most
frequent first. Calls inlined into their caller are not calls: name the
function they reach (for the clock, `Timespec>::now`, which std's
`Instant::now` and `SystemTime::now` both call).
"""
import re
import sys


def main():
    path, target, requests = sys.argv[1], sys.argv[2], float(sys.argv[3])
    # callgrind compresses names: "(12) name" the first time, "(12)" after.
    names = {}

    def name(token):
        m = re.match(r"\((\d+)\)(?: (.*))?", token)
        if m is None:
            return token
        if m.group(2):
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), "?")

    caller, callee, calls = None, None, {}
    for line in open(path, encoding="utf-8", errors="replace"):
        line = line.rstrip("\n")
        if line.startswith("fn="):
            caller = name(line[3:])
        elif line.startswith("cfn="):
            callee = name(line[4:])
        elif line.startswith("calls=") and callee is not None and target in callee:
            calls[caller] = calls.get(caller, 0) + int(line[6:].split()[0])
    total = sum(calls.values())
    print(f"calls_per_request={total / requests:.2f} into *{target}*")
    for who, n in sorted(calls.items(), key=lambda kv: -kv[1]):
        if n / requests >= 0.01:
            print(f"{n / requests:7.2f} {who[:150]}")


if __name__ == "__main__":
    main()
