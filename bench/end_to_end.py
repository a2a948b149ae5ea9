"""Benchmark the main job end to end through the fake Exchange (EWS) and Microsoft Graph servers.

For each backend, this enrols a mailbox, drops N generated replies into its
sync folder and runs one `syncd sync --once`. It prints messages per second
and the backend requests per filed message, counted from the fake server's
request log. Feedback requests, which set the category, count too. Then it
runs passes with nothing new and prints the requests of the idle pass. For Graph, each
sub-request of a `$batch` counts as a request, because Exchange Online
throttles per sub-request; the HTTP requests are printed as well.

    .venv/bin/python bench/end_to_end.py [--messages N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

# workload puts the tests directory, where the fakes live, on sys.path.
from workload import INGRID, SYNC_FOLDER, Syncd, reply

from fakes.ews_server import FakeEwsServer
from fakes.graph_server import FakeGraphServer
from fakes.token_server import FakeTokenServer

TENANT = "7f3c2a10-5b8e-4d1e-9c0a-2b6f8e4d1a93"
CLIENT = "0e9b7d4c-1a2f-4c3e-8b5d-6f7a9c0e1d2b"
CLIENT_SECRET = "klient-hemmelighet-æøå-42"


def bench_ews(count: int, directory: Path) -> None:
    with FakeEwsServer() as server:
        server.add_mailbox(INGRID)
        syncd = Syncd(directory)
        syncd(
            "mailbox", "enroll", INGRID, "--backend", "ews", "--endpoint", server.url,
            "--auth", "basic", "--username", "svc-crm@salg.example",
        )
        syncd("mailbox", "check", INGRID)
        for index in range(count):
            server.drop(INGRID, SYNC_FOLDER, reply(index))
        server.clear_requests()

        started = time.perf_counter()
        counts = syncd.json("sync", "--once")
        elapsed = time.perf_counter() - started
        filing = Counter(record.operation for record in server.requests if record.mailbox == INGRID)

        server.clear_requests()
        idle_counts = syncd.json("sync", "--once")
        idle = Counter(record.operation for record in server.requests if record.mailbox == INGRID)

    report("EWS", count, counts, elapsed, sum(filing.values()), filing)
    print(f"  idle pass: seen {idle_counts['seen']}, {sum(idle.values())} requests: {dict(idle)}")


def bench_graph(count: int, directory: Path) -> None:
    with FakeTokenServer(TENANT) as token_server:
        token_server.add_client(CLIENT, secret=CLIENT_SECRET)
        os.environ["REQUESTS_CA_BUNDLE"] = str(token_server.ca_bundle)
        with FakeGraphServer(token_checker=token_server.is_valid, concurrency_limit=4) as graph:
            graph.add_mailbox(INGRID)
            settings = (
                f'[graph]\nbase_url = "{graph.base_url}"\n'
                f'[entra]\nauthority_host = "{token_server.authority_host}"\n'
            )
            syncd = Syncd(directory, settings, {"SYNCD_SECRET_ENTRA_CLIENT_SECRET": CLIENT_SECRET})
            syncd("mailbox", "enroll", INGRID, "--backend", "graph", "--tenant", TENANT, "--client-id", CLIENT)
            syncd("mailbox", "check", INGRID)
            for index in range(count):
                graph.drop(INGRID, SYNC_FOLDER, reply(index))
            graph.clear_requests()

            started = time.perf_counter()
            counts = syncd.json("sync", "--once")
            elapsed = time.perf_counter() - started
            records = list(graph.requests)
            kinds = Counter(_graph_kind(record.method, record.path) for record in records)
            http = sum(1 for record in records if not record.batched)

            # Graph reports syncd's own category writes as changes, so the
            # pass after the filing pass reads them once and skips them.
            graph.clear_requests()
            absorbing = syncd.json("sync", "--once")
            absorbing_requests = len(graph.requests)
            graph.clear_requests()
            idle_counts = syncd.json("sync", "--once")
            idle = Counter(_graph_kind(record.method, record.path) for record in graph.requests)

    report("Graph", count, counts, elapsed, len(records), kinds)
    print(f"  of which HTTP requests: {http} ({http / max(counts['filed'], 1):.3f} per filed message)")
    print(f"  pass after filing: seen {absorbing['seen']}, {absorbing_requests} requests")
    print(f"  idle pass: seen {idle_counts['seen']}, {sum(idle.values())} requests: {dict(idle)}")


def _graph_kind(method: str, path: str) -> str:
    for marker in ("delta", "$value", "$batch", "move", "mailFolders"):
        if marker in path:
            return f"{method} {marker}"
    return f"{method} message" if "/messages/" in path else f"{method} other"


def report(name: str, count: int, counts: dict[str, int], elapsed: float, requests: int, kinds: Counter[str]) -> None:
    filed = counts["filed"]
    print(f"{name}: {count} messages dropped, one pass: {counts}")
    print(f"  {elapsed:.1f} s, {counts['seen'] / elapsed:.1f} messages/s")
    print(f"  {requests} backend requests, {requests / max(filed, 1):.3f} per filed message: {dict(kinds)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=500, help="messages dropped into the sync folder")
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory() as ews_directory, tempfile.TemporaryDirectory() as graph_directory:
        bench_ews(arguments.messages, Path(ews_directory))
        bench_graph(arguments.messages, Path(graph_directory))


if __name__ == "__main__":
    main()
