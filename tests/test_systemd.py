"""The shipped systemd unit: it verifies, and it runs the daemon the way the README installs it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parents[1] / "systemd"


def test_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart exists, so point it at this checkout's syncd.
    unit = (SYSTEMD / "syncd.service").read_text()
    unit = unit.replace("/opt/syncd/.venv/bin/syncd", str(Path(sys.executable).parent / "syncd"))
    copy = tmp_path / "syncd.service"
    copy.write_text(unit)

    done = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == ""


def test_unit_is_notify_with_watchdog() -> None:
    unit = (SYSTEMD / "syncd.service").read_text()
    assert "Type=notify" in unit
    assert "WatchdogSec=" in unit
    assert "User=syncd" in unit
    assert "StateDirectory=syncd" in unit


def test_sysusers_creates_service_user() -> None:
    assert (SYSTEMD / "syncd.sysusers").read_text().splitlines()[-1].startswith("u syncd ")
