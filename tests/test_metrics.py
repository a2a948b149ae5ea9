"""Prometheus metrics: values after passes over the fake Exchange servers, the /metrics endpoint, its settings."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import exchangelib
import pytest
from cli_runner import SyncdCli
from fakes.ews_server import FakeEwsServer
from fakes.ews_server import Fault as EwsFault
from fakes.graph_server import FakeGraphServer
from fakes.token_server import FakeTokenServer

import syncd.backends
from syncd import metrics
from syncd.errors import ConfigError
from syncd.settings import MetricsSettings

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
EXPECTED: dict[str, dict[str, Any]] = json.loads((SAMPLES / "expected.json").read_text(encoding="utf-8"))
SYNCD = [sys.executable, "-m", "syncd"]

INGRID = "ingrid.berg@salg.example"
SYNC_FOLDER = "CRM-arkiv"
SERVICE_PASSWORD = "Sv4rt-hemmelig-æøå"
TENANT = "7f3c2a10-5b8e-4d1e-9c0a-2b6f8e4d1a93"
CLIENT = "0e9b7d4c-1a2f-4c3e-8b5d-6f7a9c0e1d2b"
CLIENT_SECRET = "klient-hemmelighet-æøå-42"

#: The metric families the endpoint serves, as they appear in `# TYPE` lines of the text format.
FAMILIES = {
    "syncd_items_total": "counter",
    "syncd_pass_duration_seconds": "histogram",
    "syncd_passes_total": "counter",
    "syncd_backend_requests_total": "counter",
    "syncd_backend_retries_total": "counter",
    "syncd_mailbox_lease_held": "gauge",
    "syncd_mailbox_failing": "gauge",
}


@pytest.fixture(autouse=True)
def _fresh_metrics() -> None:
    # The registry lives as long as the test process, and every test here
    # syncs the same mailbox address.
    for metric in (
        metrics.ITEMS, metrics.PASS_DURATION, metrics.PASSES, metrics.BACKEND_REQUESTS,
        metrics.RETRIES, metrics.LEASE_HELD, metrics.FAILING,
    ):
        metric.clear()


def _value(name: str, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)


def _free_port() -> int:
    """Return a free TCP port on 127.0.0.1 below Linux's default ephemeral range (32768-60999).

    A port that the kernel hands out for outgoing connections may be taken
    by one, such as a PostgreSQL connection, before the server binds it.
    """
    for _ in range(100):
        port = random.randrange(20000, 32768)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free TCP port on 127.0.0.1 between 20000 and 32767")


def _samples() -> list[bytes]:
    return [path.read_bytes() for path in sorted((SAMPLES / "mail").glob("*.eml"))]


def _assert_items_match(counts: dict[str, int]) -> None:
    assert _value("syncd_items_total", mailbox=INGRID, outcome="filed") == counts["filed"]
    assert _value("syncd_items_total", mailbox=INGRID, outcome="unmatched") == counts["unmatched"]
    assert _value("syncd_items_total", mailbox=INGRID, outcome="failed") == counts["failed"]
    assert _value("syncd_items_total", mailbox=INGRID, outcome="duplicate") == counts["duplicates"]


# -- values after a pass ----------------------------------------------------------------


@pytest.fixture
def ews() -> Iterator[FakeEwsServer]:
    with FakeEwsServer() as server:
        server.add_mailbox(INGRID)
        yield server
    syncd.backends.forget_credentials()
    exchangelib.close_connections()


@pytest.fixture
def ews_cli(store_url: str, tmp_path: Path, ews: FakeEwsServer) -> SyncdCli:
    config = tmp_path / "settings.toml"
    config.write_text("[sync]\nmax_attempts = 4\nmax_backoff_seconds = 3\nbatch_size = 4\n[ews]\ntimeout_seconds = 1\n")
    cli = SyncdCli({
        "SYNCD_DATABASE_URL": store_url,
        "SYNCD_CONFIG": str(config),
        "SYNCD_SECRET_EWS_PASSWORD": SERVICE_PASSWORD,
    })
    cli("crm", "load", str(SAMPLES / "crm.json"))
    cli("mailbox", "enroll", INGRID, "--backend", "ews", "--endpoint", ews.url, "--auth", "basic",
        "--username", "svc-crm@salg.example")
    cli("mailbox", "check", INGRID)
    return cli


def test_ews_pass_counted(ews: FakeEwsServer, ews_cli: SyncdCli) -> None:
    for mime in _samples():
        ews.drop(INGRID, SYNC_FOLDER, mime)
    ews.fail_next("SyncFolderItems", EwsFault.SERVER_BUSY, back_off_ms=100)
    metrics.BACKEND_REQUESTS.clear()
    ews.clear_requests()

    counts = ews_cli.json("sync", "--once")

    assert counts["seen"] == len(EXPECTED)
    _assert_items_match(counts)
    assert _value("syncd_passes_total", mailbox=INGRID, result="ok") == 1
    assert _value("syncd_passes_total", mailbox=INGRID, result="failed") == 0
    assert _value("syncd_pass_duration_seconds_count", mailbox=INGRID) == 1
    assert _value("syncd_mailbox_failing", mailbox=INGRID) == 0
    assert _value("syncd_backend_retries_total", mailbox=INGRID) == 1
    served = [record for record in ews.requests if record.mailbox == INGRID]
    assert _value("syncd_backend_requests_total", mailbox=INGRID, backend="ews") == len(served)


def test_ews_failed_pass_marks_failing(ews: FakeEwsServer, ews_cli: SyncdCli) -> None:
    ews.fail_next("*", EwsFault.HTTP_401)

    ews_cli("sync", "--once", code=1)

    assert _value("syncd_passes_total", mailbox=INGRID, result="failed") == 1
    assert _value("syncd_passes_total", mailbox=INGRID, result="ok") == 0
    assert _value("syncd_pass_duration_seconds_count", mailbox=INGRID) == 1
    assert _value("syncd_mailbox_failing", mailbox=INGRID) == 1


def test_graph_pass_counted(store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeTokenServer(TENANT) as tokens:
        tokens.add_client(CLIENT, secret=CLIENT_SECRET)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tokens.ca_bundle))
        with FakeGraphServer(token_checker=tokens.is_valid, concurrency_limit=4) as graph:
            graph.add_mailbox(INGRID)
            config = tmp_path / "settings.toml"
            config.write_text(
                "[sync]\nbatch_size = 4\n"
                f'[graph]\nbase_url = "{graph.base_url}"\ntimeout_seconds = 2\n'
                f'[entra]\nauthority_host = "{tokens.authority_host}"\n'
            )
            cli = SyncdCli({
                "SYNCD_DATABASE_URL": store_url,
                "SYNCD_CONFIG": str(config),
                "SYNCD_SECRET_ENTRA_CLIENT_SECRET": CLIENT_SECRET,
            })
            cli("crm", "load", str(SAMPLES / "crm.json"))
            cli("mailbox", "enroll", INGRID, "--backend", "graph", "--tenant", TENANT, "--client-id", CLIENT)
            cli("mailbox", "check", INGRID)
            for mime in _samples():
                graph.drop(INGRID, SYNC_FOLDER, mime)
            metrics.BACKEND_REQUESTS.clear()
            graph.clear_requests()

            counts = cli.json("sync", "--once")

            # A $batch is one HTTP request, whatever number of sub-requests it carries.
            sent = [record for record in graph.requests if not record.batched]
    syncd.backends.forget_credentials()

    assert counts["seen"] == len(EXPECTED)
    _assert_items_match(counts)
    assert _value("syncd_passes_total", mailbox=INGRID, result="ok") == 1
    assert _value("syncd_backend_retries_total", mailbox=INGRID) == 0
    assert _value("syncd_backend_requests_total", mailbox=INGRID, backend="graph") == len(sent)


def test_lease_and_forget_mailbox() -> None:
    metrics.lease_held(INGRID, True)
    held = _value("syncd_mailbox_lease_held", mailbox=INGRID)
    metrics.lease_held(INGRID, False)
    released = _value("syncd_mailbox_lease_held", mailbox=INGRID)
    metrics.pass_finished(INGRID, 0.2, ok=False)
    metrics.forget_mailbox(INGRID)

    assert held == 1
    assert released == 0
    assert _value("syncd_mailbox_lease_held", mailbox=INGRID) is None
    assert _value("syncd_mailbox_failing", mailbox=INGRID) is None
    assert _value("syncd_passes_total", mailbox=INGRID, result="failed") == 1


# -- the endpoint -----------------------------------------------------------------------


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
        return body.decode()


def _type_lines(exposition: str) -> dict[str, str]:
    return {
        parts[2]: parts[3]
        for parts in (line.split() for line in exposition.splitlines() if line.startswith("# TYPE "))
    }


def test_endpoint_off_by_default() -> None:
    assert MetricsSettings().enabled is False
    assert metrics.serve(MetricsSettings()) is None


def test_endpoint_serves_families_on_loopback(caplog: pytest.LogCaptureFixture) -> None:
    metrics.pass_finished(INGRID, 1.5, ok=True)
    caplog.set_level("INFO", logger="syncd.metrics")
    endpoint = metrics.serve(MetricsSettings(enabled=True, port=_free_port()))
    assert endpoint is not None
    try:
        exposition = _get(endpoint.url)
    finally:
        endpoint.close()

    assert endpoint.url.startswith("http://127.0.0.1:")
    assert endpoint.url.endswith("/metrics")
    types = _type_lines(exposition)
    for family, kind in FAMILIES.items():
        assert types.get(family) == kind, family
    assert f'syncd_passes_total{{mailbox="{INGRID}",result="ok"}} 1.0' in exposition
    assert "process_resident_memory_bytes" in exposition
    assert f"metrics served at {endpoint.url}" in caplog.text
    assert "reachable from the network" not in caplog.text


def test_endpoint_port_in_use_rejected() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        with pytest.raises(ConfigError) as raised:
            metrics.serve(MetricsSettings(enabled=True, port=port))

    message = str(raised.value)
    assert f"cannot listen on 127.0.0.1 port {port}" in message
    assert "set metrics.port to a free port" in message
    assert "\n" not in message


def test_endpoint_off_loopback_warns(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # Tests listen on loopback only, so the server binds 127.0.0.1 whatever
    # address the settings name; the warning depends on the setting alone.
    real_start = metrics.start_http_server

    def start_on_loopback(port: int, addr: str, **kwargs: Any) -> Any:
        return real_start(port, "127.0.0.1", **kwargs)

    monkeypatch.setattr(metrics, "start_http_server", start_on_loopback)
    endpoint = metrics.serve(MetricsSettings(enabled=True, address="192.0.2.10", port=_free_port()))
    assert endpoint is not None
    endpoint.close()

    [warning] = [record for record in caplog.records if record.levelname == "WARNING"]
    assert "reachable from the network" in warning.getMessage()
    assert 'metrics.address = "127.0.0.1"' in warning.getMessage()


# -- the daemon -------------------------------------------------------------------------


def _listening_ports(pid: int) -> set[int]:
    """Return the TCP ports on which process `pid` listens, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            # State 0A is LISTEN; field 9 is the socket's inode.
            if fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


class Daemon:
    """`syncd run` as a child process, ready once its journal line "syncd started" is out."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen([*SYNCD, "run"], env=env, stderr=subprocess.PIPE, text=True)
        assert self.process.stderr is not None
        self.lines: list[str] = []
        # Reading stderr blocks, so a daemon that hangs before it starts is killed.
        watchdog = threading.Timer(60, self.process.kill)
        watchdog.start()
        try:
            for line in self.process.stderr:
                self.lines.append(line)
                if "syncd started" in line:
                    return
        finally:
            watchdog.cancel()
        raise AssertionError("syncd run stopped before it started:\n" + "".join(self.lines))

    def stop(self) -> str:
        self.process.terminate()
        _, rest = self.process.communicate(timeout=60)
        return "".join(self.lines) + rest


@pytest.fixture
def daemon_env(sqlite_template: Path, tmp_path: Path) -> dict[str, str]:
    """The environment of a daemon with one drop-directory mailbox holding one mail.

    The daemon tests are about the endpoint, not the store, so they run on SQLite only.
    """
    store = tmp_path / "syncd.db"
    shutil.copy(sqlite_template, store)
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "mail.eml").write_bytes(_samples()[0])
    config = tmp_path / "settings.toml"
    config.write_text("")
    env = {"SYNCD_DATABASE_URL": f"sqlite:///{store}", "SYNCD_CONFIG": str(config)}
    cli = SyncdCli(env)
    cli("crm", "load", str(SAMPLES / "crm.json"))
    cli("mailbox", "enroll", INGRID, "--backend", "folder", "--path", str(drop))
    environment = {**os.environ, **env}
    environment.pop("NOTIFY_SOCKET", None)
    return environment


@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="reads listening sockets from Linux's /proc")
def test_daemon_listens_nowhere_by_default(daemon_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "settings.toml").write_text("[sync]\ninterval_seconds = 1\njitter_seconds = 0\n")

    daemon = Daemon(daemon_env)
    try:
        ports = _listening_ports(daemon.process.pid)
    finally:
        stderr = daemon.stop()

    assert ports == set()
    assert "metrics served" not in stderr


@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="reads listening sockets from Linux's /proc")
def test_daemon_serves_metrics_when_enabled(daemon_env: dict[str, str], tmp_path: Path) -> None:
    port = _free_port()
    (tmp_path / "settings.toml").write_text(
        f"[sync]\ninterval_seconds = 1\njitter_seconds = 0\n[metrics]\nenabled = true\nport = {port}\n"
    )
    ok_pass = f'syncd_passes_total{{mailbox="{INGRID}",result="ok"}}'

    daemon = Daemon(daemon_env)
    try:
        ports = _listening_ports(daemon.process.pid)
        deadline = time.monotonic() + 30
        exposition = _get(f"http://127.0.0.1:{port}/metrics")
        while ok_pass not in exposition and time.monotonic() < deadline:
            time.sleep(0.2)
            exposition = _get(f"http://127.0.0.1:{port}/metrics")
    finally:
        stderr = daemon.stop()

    assert ports == {port}
    assert f"metrics served at http://127.0.0.1:{port}/metrics" in stderr
    assert ok_pass in exposition
    assert f'syncd_items_total{{mailbox="{INGRID}",outcome="filed"}} 1.0' in exposition
    assert f'syncd_mailbox_lease_held{{mailbox="{INGRID}"}} 1.0' in exposition
    types = _type_lines(exposition)
    for family, kind in FAMILIES.items():
        assert types.get(family) == kind, family


# -- settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "shown", "advice"),
    [
        ("port = 70000", "metrics.port = 70000", "use a free port from 1 to 65535"),
        ("port = 0", "metrics.port = 0", "use a free port from 1 to 65535"),
        ('address = "localhost"', "metrics.address = 'localhost'", "use 127.0.0.1, or the IP address"),
        ('address = "127.0.0.1:9810"', "metrics.address = '127.0.0.1:9810'", "use 127.0.0.1, or the IP address"),
    ],
)
def test_bad_metrics_setting_rejected(tmp_path: Path, setting: str, shown: str, advice: str) -> None:
    config = tmp_path / "settings.toml"
    config.write_text(f"[metrics]\nenabled = true\n{setting}\n")
    cli = SyncdCli({"SYNCD_CONFIG": str(config), "SYNCD_DATABASE_URL": f"sqlite:///{tmp_path / 'crm.db'}"})

    result = cli("status", code=1)

    [line] = result.stderr.splitlines()
    assert line.startswith(f"Error: invalid setting {shown} in ")
    assert advice in line
    assert "SYNCD_METRICS__" in line


def test_bad_metrics_address_from_environment_rejected(tmp_path: Path) -> None:
    config = tmp_path / "settings.toml"
    config.write_text("")
    cli = SyncdCli({
        "SYNCD_CONFIG": str(config),
        "SYNCD_DATABASE_URL": f"sqlite:///{tmp_path / 'crm.db'}",
        "SYNCD_METRICS__ADDRESS": "metrics.salg.example",
    })

    result = cli("status", code=1)

    [line] = result.stderr.splitlines()
    assert line.startswith("Error: invalid setting metrics.address = 'metrics.salg.example'")
    assert "use 127.0.0.1, or the IP address" in line
    assert "SYNCD_METRICS__ADDRESS" in line
