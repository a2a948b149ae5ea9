"""Mailbox leases between syncd nodes, on SQLite and PostgreSQL, with a clock the tests move."""

from __future__ import annotations

import shutil
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cli_runner import SyncdCli
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from crmstore import db
from crmstore.models import Mailbox, SyncNode
from syncd.errors import ConfigError
from syncd.lease import Leases, LeaseLostError, lease_owners, process_alive

LEASE = 60


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _enrol(sessions: sessionmaker[Session], count: int) -> list[str]:
    addresses = [f"selger{number:02d}@salg.example" for number in range(count)]
    with sessions() as session, session.begin():
        session.add_all(Mailbox(address=address, backend="folder", config={}) for address in addresses)
    return addresses


def _node(
    sessions: sessionmaker[Session], clock: Clock, *, pid: int, hostname: str = "node-a", alive: bool = True
) -> Leases:
    return Leases(
        sessions, LEASE, single_node=False, hostname=hostname, pid=pid, clock=clock, alive=lambda _pid: alive
    )


def test_lease_one_holder_at_a_time(sessions: sessionmaker[Session], clock: Clock) -> None:
    [address] = _enrol(sessions, 1)
    first, second = _node(sessions, clock, pid=1, hostname="a"), _node(sessions, clock, pid=2, hostname="b")
    first.join()
    second.join()

    assert first.acquire(address).held
    refused = second.acquire(address)

    assert not refused.held
    assert refused.owner == first.node_id
    assert refused.expires_at == clock.now + timedelta(seconds=LEASE)


def test_lease_expired_moves_to_other_node(sessions: sessionmaker[Session], clock: Clock) -> None:
    [address] = _enrol(sessions, 1)
    first, second = _node(sessions, clock, pid=1, hostname="a"), _node(sessions, clock, pid=2, hostname="b")
    first.join()
    second.join()
    first.acquire(address)

    clock.advance(LEASE - 1)
    assert not second.acquire(address).held
    clock.advance(2)
    assert second.acquire(address).held

    with pytest.raises(LeaseLostError, match=f"mailbox {address}: lease lost to another node"):
        first.renew(address)
    assert address not in first.held


def test_lease_renewal_keeps_it(sessions: sessionmaker[Session], clock: Clock) -> None:
    [address] = _enrol(sessions, 1)
    first, second = _node(sessions, clock, pid=1, hostname="a"), _node(sessions, clock, pid=2, hostname="b")
    first.join()
    second.join()
    first.acquire(address)

    for _ in range(5):
        clock.advance(LEASE / 2)
        first.heartbeat()
        second.heartbeat()
        assert not second.acquire(address).held
    first.renew(address)


def test_leave_releases_every_lease(sessions: sessionmaker[Session], clock: Clock) -> None:
    addresses = _enrol(sessions, 3)
    first, second = _node(sessions, clock, pid=1, hostname="a"), _node(sessions, clock, pid=2, hostname="b")
    first.join()
    for address in addresses:
        first.acquire(address)

    first.leave()
    second.join()

    assert all(second.acquire(address).held for address in addresses)
    with sessions() as session:
        assert list(session.scalars(select(SyncNode.id))) == [second.node_id]


def test_join_frees_dead_local_process_leases(
    sessions: sessionmaker[Session], clock: Clock
) -> None:
    [address] = _enrol(sessions, 1)
    killed = _node(sessions, clock, pid=1, hostname="a")
    killed.join()
    killed.acquire(address)

    restarted = _node(sessions, clock, pid=2, hostname="a", alive=False)
    restarted.join()

    assert restarted.acquire(address).held


def test_join_keeps_live_local_process_leases(sessions: sessionmaker[Session], clock: Clock) -> None:
    [address] = _enrol(sessions, 1)
    first = _node(sessions, clock, pid=1, hostname="a")
    first.join()
    first.acquire(address)

    second = _node(sessions, clock, pid=2, hostname="a", alive=True)
    second.join()

    assert not second.acquire(address).held


def test_fair_share_splits_mailboxes(sessions: sessionmaker[Session], clock: Clock) -> None:
    addresses = _enrol(sessions, 10)
    first = _node(sessions, clock, pid=1, hostname="a")
    first.join()
    assert all(first.acquire(address).held for address in addresses)

    second = _node(sessions, clock, pid=2, hostname="b")
    third = _node(sessions, clock, pid=3, hostname="c")
    second.join()
    third.join()
    busy = addresses[0]
    first.heartbeat(busy=[busy])
    for node in (second, third):
        for address in addresses:
            node.acquire(address)

    assert len(first.held) == 4
    assert busy in first.held
    assert sorted([*first.held, *second.held, *third.held]) == addresses
    assert not first.held & second.held
    assert not second.held & third.held
    assert not first.held & third.held


def test_fair_share_spreads_remainder(sessions: sessionmaker[Session], clock: Clock) -> None:
    addresses = _enrol(sessions, 4)
    nodes = [_node(sessions, clock, pid=pid, hostname=f"host{pid}") for pid in range(3)]
    for node in nodes:
        node.join()

    for node in nodes:
        for address in addresses:
            node.acquire(address)

    assert sorted(len(node.held) for node in nodes) == [1, 1, 2]


def test_full_share_reports_holder_expiry(
    sessions: sessionmaker[Session], clock: Clock
) -> None:
    [address] = _enrol(sessions, 1)
    first, second = _node(sessions, clock, pid=1, hostname="a"), _node(sessions, clock, pid=2, hostname="b")
    first.join()
    second.join()
    first.acquire(address)

    refused = second.acquire(address)
    clock.advance(LEASE + 1)
    taken = second.acquire(address)

    assert (refused.held, refused.owner, refused.expires_at) == (False, first.node_id, clock.now - timedelta(seconds=1))
    assert taken.held


def test_full_share_takes_no_more(sessions: sessionmaker[Session], clock: Clock) -> None:
    addresses = _enrol(sessions, 4)
    first, second = _node(sessions, clock, pid=1, hostname="a"), _node(sessions, clock, pid=2, hostname="b")
    first.join()
    second.join()

    taken = [address for address in addresses if first.acquire(address).held]
    refused = first.acquire(addresses[-1])

    assert taken == addresses[:2]
    assert refused == type(refused)(held=False)


def test_heartbeat_releases_disabled_mailboxes(sessions: sessionmaker[Session], clock: Clock) -> None:
    [address] = _enrol(sessions, 1)
    node = _node(sessions, clock, pid=1)
    node.join()
    node.acquire(address)
    with sessions() as session, session.begin():
        session.scalars(select(Mailbox)).one().enabled = False

    node.heartbeat()

    assert node.held == set()
    with sessions() as session:
        assert lease_owners(session, clock.now) == {}


def test_heartbeat_reregisters_stalled_node(sessions: sessionmaker[Session], clock: Clock) -> None:
    stalled = _node(sessions, clock, pid=1, hostname="a")
    stalled.join()
    clock.advance(LEASE + 1)
    _node(sessions, clock, pid=2, hostname="b").join()

    stalled.heartbeat()

    with sessions() as session:
        assert stalled.node_id in set(session.scalars(select(SyncNode.id)))


def test_acquire_race_has_one_winner(sessions: sessionmaker[Session], clock: Clock) -> None:
    addresses = _enrol(sessions, 20)
    nodes = [_node(sessions, clock, pid=pid, hostname=f"host{pid}") for pid in range(4)]
    for node in nodes:
        node.join()
        node.balance = False
    start = threading.Barrier(len(nodes))

    def grab(node: Leases) -> None:
        start.wait()
        for address in addresses:
            node.acquire(address)

    threads = [threading.Thread(target=grab, args=(node,)) for node in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    held = [address for node in nodes for address in node.held]
    assert sorted(held) == addresses
    with sessions() as session:
        owners = lease_owners(session, clock.now)
    for node in nodes:
        assert {address for address, (owner, _) in owners.items() if owner == node.node_id} == node.held


def test_sqlite_rejects_second_node(tmp_path: Path, sqlite_template: Path) -> None:
    path = tmp_path / "syncd.db"
    shutil.copy(sqlite_template, path)
    sessions = db.session_factory(db.create_store_engine(f"sqlite:///{path}"))
    clock = Clock()
    first = Leases(sessions, LEASE, single_node=True, hostname="a", pid=1, clock=clock)
    first.join()

    second = Leases(sessions, LEASE, single_node=True, hostname="b", pid=2, clock=clock)
    with pytest.raises(ConfigError, match="SQLite supports one node") as refused:
        second.join()

    assert "host a (pid 1)" in str(refused.value)
    assert "PostgreSQL" in str(refused.value)


def test_process_alive_zombie_is_dead() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert process_alive(child.pid)
        child.kill()
        # Not reaped yet: a zombie, which will never renew a lease.
        for _ in range(100):
            if not process_alive(child.pid):
                break
            threading.Event().wait(0.01)
        assert not process_alive(child.pid)
    finally:
        child.kill()
        child.wait()
    assert not process_alive(child.pid)


def test_sync_once_skips_leased_mailbox(
    store_url: str, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    cli = SyncdCli({"SYNCD_DATABASE_URL": store_url, "SYNCD_CONFIG": ""})
    cli("mailbox", "enroll", "ingrid.berg@salg.example", "--backend", "folder", "--path", str(drop))
    other = Leases(sessions, LEASE, single_node=False, hostname="elsewhere", pid=1)
    other.join()
    other.acquire("ingrid.berg@salg.example")

    result = cli("sync", "--once")

    assert f"mailbox ingrid.berg@salg.example is being synced by node {other.node_id} until " in result.stderr
    assert " UTC; skipped" in result.stderr
    assert f"node {other.node_id}: leases 1, last heartbeat " in cli("status").stdout
    named = cli("sync", "--once", "--mailbox", "ingrid.berg@salg.example", code=1)
    assert named.stderr.strip().endswith("UTC; try again after that, or stop that node")
    other.leave()
    cli("sync", "--once")
    with sessions() as session:
        assert session.scalars(select(Mailbox)).one().lease_node is None
