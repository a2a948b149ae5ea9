"""`syncd run` as a process: systemd notify messages, filing on schedule, clean stop."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType

import pytest
from cli_runner import SyncdCli
from fakes.ews_server import FakeEwsServer

from syncd.daemon import Daemon
from syncd.lease import Claim
from syncd.settings import load_settings

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "mail"
SYNCD = [sys.executable, "-m", "syncd"]


class NotifySocket:
    """The datagram socket systemd would own, collecting what the service sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def wait_for(self, field: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(field in message.split("\n") for message in self.messages):
                return
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
        raise AssertionError(f"no {field} within {timeout} s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def _syncd(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([*SYNCD, *args], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _daemon_env(store_url: str, tmp_path: Path, notify_socket: NotifySocket) -> dict[str, str]:
    config = tmp_path / "settings.toml"
    config.write_text("[sync]\ninterval_seconds = 1\njitter_seconds = 0\n")
    return {
        **os.environ,
        "SYNCD_DATABASE_URL": store_url,
        "SYNCD_CONFIG": str(config),
        "SYNCD_SECRET_EWS_PASSWORD": "Sv4rt-hemmelig",
        "NOTIFY_SOCKET": str(notify_socket.path),
        # Half of this is the heartbeat, which also bounds how long a SIGHUP
        # waits before the reload.
        "WATCHDOG_USEC": "2000000",
    }


def _run_daemon_until_filed(env: dict[str, str], notify_socket: NotifySocket, drop_mail: Callable[[], None]) -> str:
    """Start `syncd run`, drop a mail once it is ready, wait until it is filed, then stop it."""
    daemon = subprocess.Popen([*SYNCD, "run"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        notify_socket.wait_for("READY=1")
        drop_mail()

        deadline = time.monotonic() + 30
        filed: list[dict[str, object]] = []
        while time.monotonic() < deadline and not filed:
            time.sleep(0.5)
            filed = json.loads(_syncd(env, "correspondence", "list", "--json"))
        assert len(filed) == 1
        notify_socket.wait_for("WATCHDOG=1")

        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=60)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()

    assert daemon.returncode == 0, stderr
    notify_socket.wait_for("STOPPING=1")
    return stderr


def test_daemon_files_from_drop_directory(store_url: str, tmp_path: Path, notify_socket: NotifySocket) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    env = _daemon_env(store_url, tmp_path, notify_socket)
    _syncd(env, "crm", "load", str(SAMPLES.parent / "crm.json"))
    _syncd(env, "mailbox", "enroll", "ingrid.berg@salg.example", "--backend", "folder", "--path", str(drop))

    stderr = _run_daemon_until_filed(
        env, notify_socket, lambda: shutil.copy(SAMPLES / "01-reply-quoted-code-qp.eml", drop)
    )

    assert "syncd stopped" in stderr


def test_daemon_files_from_exchange(store_url: str, tmp_path: Path, notify_socket: NotifySocket) -> None:
    env = _daemon_env(store_url, tmp_path, notify_socket)
    _syncd(env, "crm", "load", str(SAMPLES.parent / "crm.json"))
    with FakeEwsServer() as server:
        server.add_mailbox("ingrid.berg@salg.example")
        _syncd(
            env, "mailbox", "enroll", "ingrid.berg@salg.example", "--backend", "ews", "--endpoint", server.url,
            "--auth", "basic", "--username", "svc-crm@salg.example",
        )
        _syncd(env, "mailbox", "check", "ingrid.berg@salg.example")
        mail = (SAMPLES / "01-reply-quoted-code-qp.eml").read_bytes()

        stderr = _run_daemon_until_filed(
            env, notify_socket, lambda: server.drop("ingrid.berg@salg.example", "CRM-arkiv", mail)
        )
        [item] = server.items("ingrid.berg@salg.example", "CRM-arkiv")

    assert item.categories == ["Arkivert i CRM"]
    assert "Sv4rt-hemmelig" not in stderr


def test_daemon_picks_up_enrolment_and_reload(store_url: str, tmp_path: Path, notify_socket: NotifySocket) -> None:
    env = _daemon_env(store_url, tmp_path, notify_socket)
    config = Path(env["SYNCD_CONFIG"])
    config.write_text("[sync]\ninterval_seconds = 1\njitter_seconds = 0\nenrolment_check_seconds = 1\n")
    _syncd(env, "crm", "load", str(SAMPLES.parent / "crm.json"))
    drop = tmp_path / "lars"
    drop.mkdir()

    daemon = subprocess.Popen([*SYNCD, "run"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        notify_socket.wait_for("READY=1")
        _syncd(env, "mailbox", "enroll", "lars.ovrebo@salg.example", "--backend", "folder", "--path", str(drop))
        shutil.copy(SAMPLES / "03-encoded-subject-code.eml", drop)

        deadline = time.monotonic() + 30
        filed: list[dict[str, object]] = []
        while time.monotonic() < deadline and not filed:
            time.sleep(0.5)
            filed = json.loads(_syncd(env, "correspondence", "list", "--json"))
        daemon.send_signal(signal.SIGHUP)
        time.sleep(1.5)
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=60)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()

    assert len(filed) == 1
    assert "mailbox lars.ovrebo@salg.example: scheduled every 1 s" in stderr
    assert "settings reloaded" in stderr
    assert daemon.returncode == 0


def test_daemon_refuses_uninitialised_database(tmp_path: Path) -> None:
    (tmp_path / "empty.db").touch()
    env = {**os.environ, "SYNCD_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}", "SYNCD_CONFIG": ""}
    env.pop("SYNCD_CONFIG")
    done = subprocess.run([*SYNCD, "run"], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().endswith("is not initialised or is outdated: run `syncd db upgrade`")


def test_second_sqlite_daemon_rejected(tmp_path: Path, notify_socket: NotifySocket, sqlite_template: Path) -> None:
    shutil.copy(sqlite_template, tmp_path / "syncd.db")
    env = _daemon_env(f"sqlite:///{tmp_path / 'syncd.db'}", tmp_path, notify_socket)
    first = subprocess.Popen([*SYNCD, "run"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        notify_socket.wait_for("READY=1")
        second = subprocess.run([*SYNCD, "run"], env=env, capture_output=True, text=True, timeout=60)
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()

    assert second.returncode == 1
    [error] = [line for line in second.stderr.splitlines() if line.startswith("Error:")]
    assert f"(pid {first.pid}); SQLite supports one node" in error
    assert first.returncode == 0


def test_restart_after_kill_takes_leases(
    tmp_path: Path, notify_socket: NotifySocket, sqlite_template: Path
) -> None:
    shutil.copy(sqlite_template, tmp_path / "syncd.db")
    env = _daemon_env(f"sqlite:///{tmp_path / 'syncd.db'}", tmp_path, notify_socket)
    Path(env["SYNCD_CONFIG"]).write_text("[sync]\ninterval_seconds = 1\njitter_seconds = 0\nlease_seconds = 600\n")
    _syncd(env, "crm", "load", str(SAMPLES.parent / "crm.json"))
    drop = tmp_path / "drop"
    drop.mkdir()
    _syncd(env, "mailbox", "enroll", "ingrid.berg@salg.example", "--backend", "folder", "--path", str(drop))
    killed = subprocess.Popen([*SYNCD, "run"], env=env, stderr=subprocess.DEVNULL)
    notify_socket.wait_for("READY=1")
    notify_socket.messages.clear()
    killed.kill()
    killed.wait()

    # With a lease of ten minutes, only knowing the old process is gone lets
    # the new one file this mail within the test's wait.
    stderr = _run_daemon_until_filed(
        env, notify_socket, lambda: shutil.copy(SAMPLES / "01-reply-quoted-code-qp.eml", drop)
    )

    assert "stopped nodes removed with their leases: " in stderr


def test_stop_waits_for_rescheduling_job(
    tmp_path: Path, sqlite_template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job that moves its next run while the daemon stops must not deadlock the scheduler's shutdown."""
    shutil.copy(sqlite_template, tmp_path / "syncd.db")
    config = tmp_path / "settings.toml"
    config.write_text("[sync]\ninterval_seconds = 60\njitter_seconds = 0\n")
    monkeypatch.setenv("SYNCD_DATABASE_URL", f"sqlite:///{tmp_path / 'syncd.db'}")
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    drop = tmp_path / "drop"
    drop.mkdir()
    SyncdCli({"SYNCD_DATABASE_URL": f"sqlite:///{tmp_path / 'syncd.db'}", "SYNCD_CONFIG": str(config)})(
        "mailbox", "enroll", "ingrid.berg@salg.example", "--backend", "folder", "--path", str(drop)
    )
    daemon = Daemon(str(config), load_settings(str(config)))
    inside = threading.Event()

    def held_elsewhere(_address: str) -> Claim:
        inside.set()
        # The main thread begins the shutdown while this job is still running.
        time.sleep(1.0)
        return Claim(held=False, owner="elsewhere:1:0", expires_at=datetime.now(UTC) + timedelta(seconds=30))

    monkeypatch.setattr(daemon.leases, "acquire", held_elsewhere)
    threading.Thread(target=lambda: inside.wait(30) and daemon.stop.set(), daemon=True).start()

    def hung(_signum: int, _frame: FrameType | None) -> None:
        raise AssertionError("the daemon did not stop within 30 s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        assert daemon.run() == 0
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
