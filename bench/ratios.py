#!/usr/bin/env python3
"""The ratios the goals are stated in, read off bench/sidecar.sh's results.

    bench/ratios.py target/bench/sidecar/results.tsv
    bench/ratios.py run1.tsv run2.tsv   # several runs' rounds pooled

Each row is compared with the nginx row of its own round (a variant named
`r2:idgate-1token` with `r2:nginx`), so that a host whose speed drifts
between variants does not skew the ratio; rows without a round, or in a
round without nginx, use the unlabelled nginx row. Throughput variants
compare requests/s and CPU per request with `nginx` (`nginx-1000conn` for
the 1,000-connection one), and requests/s with `nginx-stream` if the run
has it, fixed-rate ones p50 and p99 latency with
`nginx-rate`, and idgate's throughput variants also with Envoy's of the same
kind; `idgate-notoken` and `idgate-public` also with `idgate-1token` of
their round (`SAME_ROUND`). With several rounds (ROUNDS without BINS), the median of each ratio
follows; an A/B's rows (bench/sidecar.sh's BINS) are listed one by one,
never pooled.

bench/interleave.sh names its rows by cycle the same way (`r3:nginx`), and
with BINS as `r3:NAME:idgate-1token`: such a row is compared with the
round's nginx and Envoy rows, and with the same variant's row of the first
binary (the first named in the file) in its round; its medians are the
binary's own.

Several files pool their rounds: the second file's `r1` follows the first
file's last round, and so on. With rounds, each median is followed by its
interquartile range, and by how many rounds meet the issue's goal for that
ratio (or, for an A/B ratio, how many read above 1); then the medians of
each variant's own figures over the rounds.
"""

import csv
import re
import statistics
import sys

# idgate's variant -> Envoy's of the same kind
ENVOY = {
    "idgate-1token": "envoy-1token",
    "idgate-1000tokens": "envoy-1000tokens",
    "idgate-1000tokens-nocache": "envoy-1000tokens-nocache",
    "idgate-rate": "envoy-rate",
    # idgate's forward-auth behind Envoy against Envoy's own jwt_authn
    "extauthz": "envoy-1token",
}


# idgate variants that differ from one token by one flag -> the variant
# they are compared with in their round (an A/B of the flag).
SAME_ROUND = {"idgate-notoken": "idgate-1token", "idgate-public": "idgate-1token"}


# A variant's nginx row by the end of its name, else `nginx`.
NGINX_PEER = {"-1000conn": "nginx-1000conn", "-newconn": "nginx-newconn"}


# (variant, ratio) -> (goal, whether a round meets it) for the goals of
# issue 8 that a ratio states.
GOALS = {
    ("idgate-1token", "req/s / nginx"): ("0.9", lambda x: x >= 0.9),
    ("idgate-1000tokens", "req/s / nginx"): ("0.9", lambda x: x >= 0.9),
    ("idgate-1000tokens-nocache", "req/s / nginx"): ("0.45", lambda x: x >= 0.45),
    ("idgate-1token", "req/s / envoy"): ("3", lambda x: x >= 3),
    ("idgate-1000tokens", "req/s / envoy"): ("3", lambda x: x >= 3),
    ("idgate-1000tokens-nocache", "req/s / envoy"): ("3", lambda x: x >= 3),
    ("idgate-rate", "p99 / nginx"): ("<= 1.2", lambda x: x <= 1.2),
}

# A variant's own figures, whose medians over the rounds follow the ratios.
RAW = ["rps", "p50_us", "p99_us", "p999_us", "cpu_us_per_req", "upstream_cpu_us_per_req",
       "vm_hwm_kib", "server_cs_per_req", "extra_cpu_us_per_req"]


def split(name):
    label, _, base = name.rpartition(":")
    return label, base


def round_of(label):
    """`r3` or `r3:NAME` -> ("r3", "NAME" or ""); anything else -> ("", "")."""
    m = re.fullmatch(r"(r\d+)(?::(.+))?", label)
    return (m.group(1), m.group(2) or "") if m else ("", "")


def number(row, key):
    try:
        return float(row[key])
    except (KeyError, TypeError, ValueError):
        return None


def ratio(a, b):
    return a / b if a is not None and b else None


def read(paths):
    """The rows of every file, each file's rounds numbered on from the last
    file's."""
    rows, offset = [], 0
    for path in paths:
        with open(path, newline="") as f:
            these = [r for r in csv.DictReader(f, delimiter="\t") if number(r, "rps")]
        last = offset
        for r in these:
            label, base = split(r["variant"])
            rnd, name = round_of(label)
            if rnd:
                n = int(rnd[1:]) + offset
                last = max(last, n)
                r["variant"] = ":".join(filter(None, (f"r{n}", name, base)))
        rows += these
        offset = last
    return rows


def series(name, base):
    """The key of a variant's figures over the rounds: each binary's apart."""
    return f"{name}:{base}" if name else base


def spread(v):
    """The interquartile range of `v` (two or more values)."""
    q = statistics.quantiles(v, n=4)
    return f"{q[0]:.2f}-{q[2]:.2f}"


def main(paths):
    rows = read(paths)
    by = {split(r["variant"]): r for r in rows}

    def peer(label, base):
        return by.get((label, base)) or by.get((round_of(label)[0], base)) or by.get(("", base))

    # Per variant, the binary that comes first in the file (interleave.sh's
    # BINS, whose first cycle keeps their order): the reference of the rest.
    first_bin = {}
    for r in rows:
        label, base = split(r["variant"])
        rnd, name = round_of(label)
        if name:
            first_bin.setdefault(base, name)

    lines, medians = [], {}
    for r in rows:
        label, base = split(r["variant"])
        rnd, name = round_of(label)
        if base.startswith("nginx"):
            continue
        found = []

        def against(ref, key):
            return ratio(number(r, key), number(ref, key))

        if base.endswith("-rate"):
            ref = peer(label, "nginx-rate")
            if ref:
                found.append(("p50 / nginx", against(ref, "p50_us")))
                found.append(("p99 / nginx", against(ref, "p99_us")))
        else:
            ref = peer(label, next((n for s, n in NGINX_PEER.items() if base.endswith(s)), "nginx"))
            if ref:
                found.append(("req/s / nginx", against(ref, "rps")))
                found.append(("CPU/req / nginx", against(ref, "cpu_us_per_req")))
            # interleave.sh's nginx hop that streams request bodies, for
            # loads with a body (BODY_BYTES)
            stream = peer(label, "nginx-stream")
            if stream:
                found.append(("req/s / nginx-stream", against(stream, "rps")))
        flag_off = SAME_ROUND.get(base)
        flag_ref = flag_off and peer(label, flag_off)
        if flag_ref:
            found.append((f"req/s / {flag_off}", against(flag_ref, "rps")))
        other = ENVOY.get(base)
        envoy = other and peer(label, other)
        if envoy:
            if base.endswith("-rate"):
                found.append(("p99 / envoy", against(envoy, "p99_us")))
            else:
                found.append(("req/s / envoy", against(envoy, "rps")))
        ref_name = first_bin.get(base, name)
        ref_row = by.get((f"{rnd}:{ref_name}", base))
        if name and ref_name != name and ref_row:
            # At a fixed rate the requests/s are the rate: compare latency.
            for key, what in (
                [("p50_us", "p50"), ("p99_us", "p99")] if base.endswith("-rate") else [("rps", "req/s")]
            ) + [("cpu_us_per_req", "CPU/req")]:
                found.append((f"{what} / {ref_name}", against(ref_row, key)))
        found = [(k, v) for k, v in found if v is not None]
        if not found:
            continue
        lines.append((r["variant"], found))
        # Medians over rounds only, each binary's apart: sidecar.sh's A/B
        # rows (BINS, labelled by binary alone) are two builds.
        if rnd:
            for k, v in found:
                medians.setdefault((series(name, base), k), []).append(v)

    width = max((len(v) for v, _ in lines), default=0)
    for variant, found in lines:
        print(f"{variant:<{width}}  " + "  ".join(f"{k} {v:.2f}" for k, v in found))
    if any(len(v) > 1 for v in medians.values()):
        print("medians over the rounds:")
        for (base, k), v in medians.items():
            print(f"  {base} {k}: {statistics.median(v):.2f} ({len(v)} rounds: "
                  + " ".join(f"{x:.2f}" for x in v) + ")")
        print("interquartile ranges, and the rounds that meet the goal:")
        for (base, k), v in medians.items():
            if len(v) < 2:
                continue
            variant = base.rpartition(":")[2]
            goal = GOALS.get((variant, k))
            if goal:
                meets = f", goal {goal[0]} met in {sum(map(goal[1], v))} of {len(v)}"
            elif k.split(" / ")[1] in [*first_bin.values(), *SAME_ROUND.values()]:
                meets = f", above 1 in {sum(x > 1 for x in v)} of {len(v)}"
            else:
                meets = ""
            print(f"  {base} {k}: {statistics.median(v):.2f} ({spread(v)}){meets}")
        print("each variant's own figures, medians over the rounds:")
        own = {}
        for r in rows:
            label, base = split(r["variant"])
            rnd, name = round_of(label)
            if rnd:
                own.setdefault(series(name, base), []).append(r)
        for variant, rs in own.items():
            figures = []
            for key in RAW:
                v = [x for x in (number(r, key) for r in rs) if x is not None]
                if v:
                    figures.append(f"{key} {statistics.median(v):g}")
            print(f"  {variant} ({len(rs)} rounds): " + "  ".join(figures))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: bench/ratios.py RESULTS.tsv [MORE.tsv ...]")
    main(sys.argv[1:])
