"""Benchmark the peak memory of one pass over a large folder against a small one, through the fake EWS server.

For each folder size, this process starts the fake Exchange server, drops
that many small generated replies into the sync folder of a mailbox on a
fresh SQLite store, and runs `syncd sync --once` in a child process. The
child prints its peak resident set size (VmHWM in /proc/self/status, so
Linux only) before and after the pass, and with --tracemalloc the peak of
Python allocations during the pass. The fake server's copy of the mails
stays in this process, so it does not count. getrusage's ru_maxrss would
not do: Linux carries the parent's peak at fork into the child's. Invariant 4 of the design wants the peak not to grow
with the folder: the last line compares the largest folder with the first.

    .venv/bin/python bench/memory.py [--sizes 1000,10000] [--tracemalloc]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

# workload puts the tests directory, where the fakes live, on sys.path.
from workload import INGRID, SYNC_FOLDER, Syncd, reply

from fakes.ews_server import FakeEwsServer


def parent(sizes: list[int], trace: bool) -> None:
    results = []
    for size in sizes:
        with tempfile.TemporaryDirectory() as directory, FakeEwsServer() as server:
            server.add_mailbox(INGRID)
            syncd = Syncd(Path(directory))
            syncd(
                "mailbox", "enroll", INGRID, "--backend", "ews", "--endpoint", server.url,
                "--auth", "basic", "--username", "svc-crm@salg.example",
            )
            syncd("mailbox", "check", INGRID)
            for index in range(size):
                server.drop(INGRID, SYNC_FOLDER, reply(index))

            command = [sys.executable, __file__, "--child", directory] + (["--tracemalloc"] if trace else [])
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            result = json.loads(output.strip().splitlines()[-1])
            results.append((size, result))
            print(
                f"{size:6d} messages: {result['counts']} in {result['seconds']:.1f} s; "
                f"peak RSS {result['maxrss_before_kib'] / 1024:.1f} MiB before the pass, "
                f"{result['maxrss_after_kib'] / 1024:.1f} MiB after"
                + (f"; Python allocations peak {result['traced_peak_bytes'] / 2**20:.1f} MiB" if trace else "")
            )

    (first_size, first), (last_size, last) = results[0], results[-1]
    growth = last["maxrss_after_kib"] / first["maxrss_after_kib"] - 1
    print(f"peak RSS with {last_size} messages is {growth:+.1%} of the peak with {first_size}")
    if trace:
        traced = last["traced_peak_bytes"] / first["traced_peak_bytes"] - 1
        print(f"Python allocations peak with {last_size} messages is {traced:+.1%} of the peak with {first_size}")


def child(directory: Path, trace: bool) -> None:
    syncd = Syncd(directory, prepare=False)
    # The first command imports the CLI's modules, so that the peak before
    # the pass includes them.
    syncd("mailbox", "list")
    before = peak_rss_kib()
    if trace:
        tracemalloc.start()

    started = time.perf_counter()
    counts = syncd.json("sync", "--once")
    seconds = time.perf_counter() - started

    result = {
        "counts": counts,
        "seconds": seconds,
        "maxrss_before_kib": before,
        "maxrss_after_kib": peak_rss_kib(),
    }
    if trace:
        result["traced_peak_bytes"] = tracemalloc.get_traced_memory()[1]
    print(json.dumps(result))


def peak_rss_kib() -> int:
    """Return the peak resident set size of this process in KiB, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("/proc/self/status has no VmHWM line: this benchmark needs Linux")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000", help="comma-separated folder sizes, smallest first")
    parser.add_argument("--tracemalloc", action="store_true", help="also trace Python allocations (slower)")
    parser.add_argument("--child", metavar="DIRECTORY", help=argparse.SUPPRESS)
    arguments = parser.parse_args()

    if arguments.child:
        child(Path(arguments.child), arguments.tracemalloc)
    else:
        parent([int(size) for size in arguments.sizes.split(",")], arguments.tracemalloc)


if __name__ == "__main__":
    main()
