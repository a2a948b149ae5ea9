"""Runs `syncd run` as a node process with its log in a file, for the several-node tests and benchmark."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*?mailbox (\S+): lease (taken|released) by node")


class Node:
    """One `syncd run` process whose log goes to a file."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen([sys.executable, "-m", "syncd", "run"], env=env, stderr=self.log)

    def node_id(self) -> str | None:
        found = re.search(r"syncd started as node (\S+):", self.log_path.read_text())
        return found.group(1) if found else None

    def lease_events(self) -> list[tuple[datetime, str, str]]:
        events = []
        for line in self.log_path.read_text().splitlines():
            found = LOG_LINE.match(line)
            if found:
                when = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f")
                events.append((when, found.group(2), found.group(3)))
        return events

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=60)
        finally:
            self.log.close()
