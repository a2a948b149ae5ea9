"""Three `syncd run` processes share fifty mailboxes on one PostgreSQL; one is killed."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from cli_runner import SyncdCli
from factories import make_mail
from node_runner import Node
from sqlalchemy import func, select

from crmstore import db
from crmstore.models import Mailbox, ProcessedItem

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
MAILBOXES = 50
LEASE_SECONDS = 3
CODE = "87gnV/VSKQga80stcfDvpw=="

pytestmark = pytest.mark.parametrize("store_url", ["postgres"], indirect=True)


@pytest.fixture
def nodes(store_url: str, tmp_path: Path) -> Iterator[tuple[dict[str, str], list[Node], Path]]:
    config = tmp_path / "settings.toml"
    config.write_text(
        "[sync]\ninterval_seconds = 1\njitter_seconds = 0\nenrolment_check_seconds = 1\n"
        f"lease_seconds = {LEASE_SECONDS}\n"
    )
    env = {**os.environ, "SYNCD_DATABASE_URL": store_url, "SYNCD_CONFIG": str(config)}
    env.pop("NOTIFY_SOCKET", None)
    started: list[Node] = []
    yield env, started, tmp_path
    for node in started:
        node.stop(signal.SIGKILL)


def _wait(condition: Callable[[], bool], description: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s: {description}")


def _drop(drop_dirs: list[Path], round_: int) -> None:
    for number, drop in enumerate(drop_dirs):
        mail = make_mail(
            subject=f"Svar på tilbud {number}-{round_} Tracking code: {CODE}.",
            message_id=f"<node-test-{number}-{round_}@fjordmarine.example>",
            sender="Kari Nordmann <kari.nordmann@fjordmarine.example>",
        )
        (drop / f"mail-{round_}.eml").write_bytes(mail)


def test_three_nodes_survive_a_kill(
    store_url: str, nodes: tuple[dict[str, str], list[Node], Path]
) -> None:
    env, started, tmp_path = nodes
    cli = SyncdCli(env)
    cli("crm", "load", str(SAMPLES / "crm.json"))
    drop_dirs = []
    for number in range(MAILBOXES):
        drop = tmp_path / f"drop{number:02d}"
        drop.mkdir()
        drop_dirs.append(drop)
        cli("mailbox", "enroll", f"selger{number:02d}@salg.example", "--backend", "folder", "--path", str(drop))
    engine = db.create_store_engine(store_url)
    sessions = db.session_factory(engine)

    def ledger_rows() -> int:
        with sessions() as session:
            return session.scalar(select(func.count()).select_from(ProcessedItem)) or 0

    def owners() -> dict[str, str | None]:
        with sessions() as session:
            return dict(session.execute(select(Mailbox.address, Mailbox.lease_node)).all())

    _drop(drop_dirs, 1)
    started.extend(Node(f"node{number}", env, tmp_path) for number in range(3))
    _wait(lambda: ledger_rows() == MAILBOXES, "the first round filed")
    _wait(lambda: all(node.node_id() for node in started), "every node started")
    ids = {node.node_id(): node for node in started}
    _wait(
        lambda: all(0 < list(owners().values()).count(node_id) <= 17 for node_id in ids),
        "the mailboxes spread over the three nodes",
    )

    # Kill the node with the most mailboxes, then give every mailbox new mail.
    by_node = owners()
    victim_id = max(ids, key=lambda node_id: list(by_node.values()).count(node_id))
    victim = ids[victim_id]
    victim.stop(signal.SIGKILL)
    killed_at = datetime.now()
    with sessions() as session:
        expiries = dict(
            session.execute(
                select(Mailbox.address, Mailbox.lease_expires_at).where(Mailbox.lease_node == victim_id)
            ).all()
        )
    _drop(drop_dirs, 2)

    survivors = [node for node in started if node is not victim]
    _wait(lambda: ledger_rows() == 2 * MAILBOXES, "the second round filed")
    _wait(lambda: victim_id not in owners().values(), "the killed node's mailboxes taken over")
    for node in survivors:
        assert node.stop() == 0

    # Nothing twice: one correspondence and one ledger row per mail.
    filed = cli.json("correspondence", "list")
    assert len(filed) == 2 * MAILBOXES
    assert len({row["message_id"] for row in filed}) == 2 * MAILBOXES
    with sessions() as session:
        rows = session.execute(select(ProcessedItem.mailbox, ProcessedItem.outcome)).all()
    assert sorted({address for address, _ in rows}) == [f"selger{n:02d}@salg.example" for n in range(MAILBOXES)]
    assert {outcome for _, outcome in rows} == {"filed"}
    assert [path for drop in drop_dirs for path in drop.glob("*.eml")] == []

    # A killed node's mailbox is taken only after its lease ran out, and
    # within one more lease time.
    assert expiries
    taken_over = {
        address: when
        for node in survivors
        for when, address, event in node.lease_events()
        if event == "taken" and address in expiries and when >= killed_at
    }
    assert set(taken_over) == set(expiries)
    for address, when in taken_over.items():
        expiry = expiries[address].astimezone().replace(tzinfo=None)
        assert expiry <= when, address
        assert (when - expiry).total_seconds() <= LEASE_SECONDS, address

    # At no time did two live nodes hold one mailbox.
    _assert_no_overlap(survivors)
    engine.dispose()


def _assert_no_overlap(nodes: list[Node]) -> None:
    intervals: dict[str, list[tuple[datetime, datetime, str]]] = {}
    end = datetime.max
    for node in nodes:
        opened: dict[str, datetime] = {}
        for when, address, event in node.lease_events():
            if event == "taken":
                opened[address] = when
            elif address in opened:
                intervals.setdefault(address, []).append((opened.pop(address), when, node.name))
        for address, since in opened.items():
            intervals.setdefault(address, []).append((since, end, node.name))
    for address, spans in intervals.items():
        spans.sort()
        for (_, first_end, first), (second_start, _, second) in zip(spans, spans[1:]):
            assert first == second or first_end <= second_start, f"{address} held by {first} and {second} at once"
