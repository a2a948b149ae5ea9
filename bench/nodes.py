"""Benchmark several syncd nodes on one PostgreSQL: throughput per node and failover time.

Enrols M drop-directory mailboxes with N generated replies each in a scratch
PostgreSQL database on 127.0.0.1:5432, then for 1 and for 3 nodes starts that
many `syncd run` processes and times how long they take to file every mail.
It prints mails per minute in all and per node, and mailbox passes per node
per minute. Then, with 3 nodes idle, it kills the node that holds the most
mailboxes with SIGKILL and prints how long its mailboxes took to move to the
other nodes, from the kill and from the moment each lease ran out.

    .venv/bin/python bench/nodes.py [--mailboxes M] [--messages N] [--lease SECONDS]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

# workload puts the tests directory, where the node runner lives, on sys.path.
from workload import Syncd, reply

from node_runner import Node
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from crmstore import db
from crmstore.models import Mailbox, ProcessedItem

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def scratch_database() -> str:
    name = f"syncd_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
    admin.dispose()


def fill(directory: Path, mailboxes: int, messages: int, round_: int) -> list[Path]:
    drops = []
    for number in range(mailboxes):
        drop = directory / f"drop{number:03d}"
        drop.mkdir(exist_ok=True)
        for index in range(messages):
            (drop / f"r{round_}-{index}.eml").write_bytes(reply(round_ * 1_000_000 + number * 1000 + index))
        drops.append(drop)
    return drops


def run_round(url: str, env: dict[str, str], directory: Path, nodes: int, total: int) -> list[Node]:
    engine = db.create_store_engine(url)
    sessions = db.session_factory(engine)
    logs = directory / f"logs-{nodes}"
    logs.mkdir()
    started = time.monotonic()
    running = [Node(f"node{number}", env, logs) for number in range(nodes)]
    while True:
        with sessions() as session:
            done = session.scalar(select(func.count()).select_from(ProcessedItem)) or 0
        if done >= total:
            break
        time.sleep(0.2)
    elapsed = time.monotonic() - started
    engine.dispose()

    passes = [len(re.findall(r": pass done in ", node.log_path.read_text())) for node in running]
    print(
        f"{nodes} node(s): {total} mails in {elapsed:.1f} s (including start-up), "
        f"{total / elapsed * 60:.0f} mails/min in all, {total / elapsed * 60 / nodes:.0f} per node; "
        f"mailbox passes per node per minute: {', '.join(f'{count / elapsed * 60:.0f}' for count in passes)}"
    )
    return running


def failover(url: str, running: list[Node], lease: int) -> None:
    engine = db.create_store_engine(url)
    sessions = db.session_factory(engine)
    with sessions() as session:
        owners = dict(session.execute(select(Mailbox.address, Mailbox.lease_node)).all())
    ids = {node.node_id(): node for node in running}
    victim_id = max(ids, key=lambda node_id: list(owners.values()).count(node_id))
    victim = ids[victim_id]
    victim.stop(signal.SIGKILL)
    killed_at = time.monotonic()
    killed_wall = datetime.now(UTC)
    with sessions() as session:
        expiries = dict(
            session.execute(
                select(Mailbox.address, Mailbox.lease_expires_at).where(Mailbox.lease_node == victim_id)
            ).all()
        )
    moved: dict[str, float] = {}
    while len(moved) < len(expiries):
        with sessions() as session:
            for address, node in session.execute(select(Mailbox.address, Mailbox.lease_node)):
                if address in expiries and address not in moved and node not in (None, victim_id):
                    moved[address] = time.monotonic() - killed_at
        time.sleep(0.05)
    engine.dispose()

    after_expiry = [
        (killed_wall + timedelta(seconds=moved[address]) - expiries[address]).total_seconds()
        for address in expiries
    ]
    print(
        f"failover with lease_seconds = {lease}: {len(expiries)} mailboxes of the killed node moved "
        f"{min(moved.values()):.1f} to {max(moved.values()):.1f} s after the kill "
        f"(at most {max(after_expiry):.1f} s after their lease ran out)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mailboxes", type=int, default=60)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--lease", type=int, default=10)
    args = parser.parse_args()

    for nodes in (1, 3):
        url = scratch_database()
        with tempfile.TemporaryDirectory() as scratch:
            directory = Path(scratch)
            settings = (
                "[sync]\ninterval_seconds = 1\njitter_seconds = 0\nenrolment_check_seconds = 5\n"
                f"lease_seconds = {args.lease}\n"
            )
            syncd = Syncd(directory, settings, env={"SYNCD_DATABASE_URL": url})
            # The nodes log at INFO: the benchmark counts their pass lines.
            (directory / "settings.toml").write_text('log_level = "INFO"\n' + settings, encoding="utf-8")
            for number, drop in enumerate(fill(directory, args.mailboxes, args.messages, 1)):
                syncd("mailbox", "enroll", f"selger{number:03d}@salg.example", "--backend", "folder", "--path", str(drop))
            env = {**os.environ, **syncd.env}
            running = run_round(url, env, directory, nodes, args.mailboxes * args.messages)
            try:
                if nodes > 1:
                    failover(url, running, args.lease)
            finally:
                for node in running:
                    node.stop()
        drop_database(url)


if __name__ == "__main__":
    main()
