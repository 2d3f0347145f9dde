#!/usr/bin/env python3
"""Allocation sites per request from a dhat profile (bench/profile.sh allocs).

    dhat-sites.py DHAT_OUT REQUESTS

Prints the sites that allocate at least half a block per request, most
frequent first, each call stack on its own line: blocks per request, their
average size, and the first frames outside the allocator and std's
containers, so each line names the code that asked for the memory.
"""
import json
import re
import sys

# Frames that only pass an allocation along.
PLUMBING = re.compile(
    r"alloc::|__rust|malloc|realloc|calloc|core::ptr|raw_vec|RawVec|hashbrown|bytes_mut"
    r"|vec::|boxed::Box|sync::Arc|::with_capacity|::clone|<T as|finish_grow|grow_"
    r"|::new$|spec_from|from_iter|extend|push"
)


def name(frame):
    """The function of a frame, without its address and source line."""
    return re.sub(r"^0x[0-9A-F]+: | \(.*", "", frame)


def plumbing(frame):
    """Whether a frame only passes the allocation along. With line tables
    (CARGO_PROFILE_RELEASE_DEBUG=line-tables-only), inlined frames are named
    UnknownInlinedFun and std's allocation path appears by its short names
    (`alloc`, `allocate`), so its source file in Rust's library/ tells it."""
    return (
        "UnknownInlinedFun" in frame
        or " (library/" in frame
        or PLUMBING.search(name(frame)) is not None
    )


def main(path, requests):
    profile = json.load(open(path))
    frames = profile["ftbl"]
    rows = []
    for site in profile["pps"]:
        per_request = site["tbk"] / requests
        if per_request < 0.5:
            continue
        callers = [name(frames[i]) for i in site["fs"][1:] if not plumbing(frames[i])][:3]
        rows.append((per_request, site["tb"] / max(site["tbk"], 1), callers))
    rows.sort(key=lambda r: -r[0])
    # One allocation site can appear as several call stacks (the first
    # request on a connection, say), some under the cut: `all_` counts every
    # block of the run, start-up included; `listed_` only the rows below.
    all_blocks = sum(site["tbk"] for site in profile["pps"]) / requests
    listed = sum(r[0] for r in rows)
    bytes_listed = sum(r[0] * r[1] for r in rows)
    print(
        f"requests={requests:.0f} all_blocks_per_request={all_blocks:.1f}"
        f" listed_blocks_per_request={listed:.1f} listed_bytes_per_request={bytes_listed:.0f}"
    )
    for per_request, size, callers in rows[:40]:
        print(f"{per_request:5.2f} x {size:6.0f} B  " + " <- ".join(c[:70] for c in callers))


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
