"""Mailbox leases: at most one node syncs a mailbox at a time.

Several syncd nodes can share one PostgreSQL database. Each node registers
in `sync_nodes` and renews a heartbeat there. A node syncs a mailbox only
while it has the lease on the mailbox row (`lease_node` and
`lease_expires_at`). A lease is taken with one conditional UPDATE, which
PostgreSQL re-checks under the row lock, so two nodes racing for a free
mailbox cannot both win. A node that dies stops renewing and its leases run
out after `sync.lease_seconds`; the other nodes then take its mailboxes. A
node on the same host whose process is gone is known dead at once.

Each node holds at most its fair share of the enabled mailboxes (the count
divided by the live nodes, the remainder one each to the first nodes) and
hands back the rest, so the mailboxes spread out when nodes join.

SQLite has no server to coordinate through, so a SQLite store accepts one
node and rejects a second with a message saying so.

Lease times come from each node's clock, so nodes must keep their clocks in
step (NTP), well within the lease time.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import CursorResult, Update, and_, delete, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from crmstore.models import Mailbox, SyncNode, utcnow
from syncd.errors import ConfigError, SyncdError

log = logging.getLogger("syncd.lease")

#: A node not heard from for this many lease times is removed from `sync_nodes`.
FORGET_AFTER_LEASES = 10


class LeaseLostError(SyncdError):
    """Another node took the mailbox; the pass in hand must end."""


@dataclass(frozen=True)
class Claim:
    """Outcome of a lease request.

    When `held` is false, `owner` and `expires_at` name the node that has
    the mailbox and when its lease runs out. Both are None when the mailbox
    is free and this node is at its fair share.
    """

    held: bool
    owner: str | None = None
    expires_at: datetime | None = None


def new_node_id(hostname: str, pid: int) -> str:
    # The random part keeps ids unique when a pid is reused after a reboot.
    return f"{hostname}:{pid}:{secrets.token_hex(4)}"


def process_alive(pid: int) -> bool:
    """Tell whether process `pid` on this host still runs; a zombie counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The state letter follows the command name, which is in parentheses.
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


class Leases:
    """This node's membership and mailbox leases in one store."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        lease_seconds: float,
        *,
        single_node: bool,
        hostname: str | None = None,
        pid: int | None = None,
        balance: bool = True,
        clock: Callable[[], datetime] = utcnow,
        alive: Callable[[int], bool] = process_alive,
    ) -> None:
        self.sessions = sessions
        self.lease = timedelta(seconds=lease_seconds)
        self.single_node = single_node
        self.hostname = hostname or socket.gethostname()
        self.pid = pid if pid is not None else os.getpid()
        self.node_id = new_node_id(self.hostname, self.pid)
        self.clock = clock
        self.alive = alive
        # A one-off `syncd sync --once` takes whatever lease is free.
        self.balance = balance
        #: Mailboxes this node has leased. Job threads and the heartbeat change
        #: it, and the lease rows, under `_lock`.
        self.held: set[str] = set()
        self._lock = threading.RLock()

    def join(self) -> None:
        """Register this node; clear what dead nodes on this host left behind.

        Raises ConfigError on a single-node store that another live node uses.
        """
        now = self.clock()
        with self.sessions() as session, session.begin():
            nodes = list(session.scalars(select(SyncNode)))
            dead = [node.id for node in nodes if self._is_dead(node, now)]
            if dead:
                session.execute(delete(SyncNode).where(SyncNode.id.in_(dead)))
                session.execute(
                    update(Mailbox).where(Mailbox.lease_node.in_(dead)).values(lease_node=None, lease_expires_at=None)
                )
                log.info("stopped nodes removed with their leases: %s", ", ".join(dead))
            others = [node for node in nodes if node.id not in dead]
            if self.single_node and others:
                other = others[0]
                raise ConfigError(
                    f"this SQLite database is in use by syncd on host {other.hostname} (pid {other.pid}); "
                    "SQLite supports one node: stop that one, or move the store to PostgreSQL to run several"
                )
            session.add(SyncNode(id=self.node_id, hostname=self.hostname, pid=self.pid, started_at=now, seen_at=now))
        log.info("node %s joined", self.node_id)

    def leave(self) -> None:
        """Hand back every lease and unregister, so other nodes take over at once."""
        for address in sorted(self.held):
            log.info("mailbox %s: lease released by node %s", address, self.node_id, extra={"mailbox": address})
        with self.sessions() as session, session.begin():
            session.execute(
                update(Mailbox)
                .where(Mailbox.lease_node == self.node_id)
                .values(lease_node=None, lease_expires_at=None)
            )
            session.execute(delete(SyncNode).where(SyncNode.id == self.node_id))
        log.info("node %s left; mailboxes released: %d", self.node_id, len(self.held))
        self.held.clear()

    def acquire(self, address: str) -> Claim:
        """Take or renew the lease on mailbox `address` unless this node is at its fair share.

        A rejected claim names the holder, so that the caller can come back
        when its lease runs out. By then a dead holder has also left its
        share free.
        """
        # Under the lock, so that a heartbeat handing the mailbox back cannot
        # interleave with taking it again and leave a lease that nobody knows.
        with self._lock:
            if self.balance and address not in self.held and len(self.held) >= self.fair_share():
                return self._holder(address)

            now = self.clock()
            with self.sessions() as session, session.begin():
                taken = _changed(
                    session,
                    update(Mailbox)
                    .where(
                        Mailbox.address == address,
                        or_(
                            Mailbox.lease_node.is_(None),
                            Mailbox.lease_node == self.node_id,
                            Mailbox.lease_expires_at < now,
                        ),
                    )
                    .values(lease_node=self.node_id, lease_expires_at=now + self.lease),
                )
            if not taken:
                self._forget(address)
                return self._holder(address)

            if address not in self.held:
                log.info("mailbox %s: lease taken by node %s", address, self.node_id, extra={"mailbox": address})
            self.held.add(address)
        return Claim(held=True, owner=self.node_id, expires_at=now + self.lease)

    def renew(self, address: str) -> None:
        """Extend the lease on `address`; raise LeaseLostError when another node has it."""
        now = self.clock()
        with self.sessions() as session, session.begin():
            renewed = _changed(
                session,
                update(Mailbox)
                .where(Mailbox.address == address, Mailbox.lease_node == self.node_id)
                .values(lease_expires_at=now + self.lease),
            )
        if not renewed:
            self._forget(address)
            raise LeaseLostError(f"mailbox {address}: lease lost to another node")

    def release(self, addresses: Iterable[str]) -> None:
        chosen = sorted(addresses)
        if not chosen:
            return
        with self._lock:
            for address in chosen:
                log.info("mailbox %s: lease released by node %s", address, self.node_id, extra={"mailbox": address})
            with self.sessions() as session, session.begin():
                session.execute(
                    update(Mailbox)
                    .where(Mailbox.address.in_(chosen), Mailbox.lease_node == self.node_id)
                    .values(lease_node=None, lease_expires_at=None)
                    .execution_options(synchronize_session=False)
                )
            self.held.difference_update(chosen)

    def heartbeat(self, busy: Iterable[str] = ()) -> None:
        """Renew this node's row and leases, forget long-gone nodes, and hand back leases over the fair share.

        Mailboxes in `busy` are in a pass and are not handed back now.
        """
        now = self.clock()
        with self._lock:
            before = set(self.held)
        with self.sessions() as session, session.begin():
            seen = _changed(session, update(SyncNode).where(SyncNode.id == self.node_id).values(seen_at=now))
            if not seen:
                # Another node took this one for dead (a long stall); join again.
                session.add(SyncNode(id=self.node_id, hostname=self.hostname, pid=self.pid, started_at=now, seen_at=now))
                log.warning("node %s was taken for dead by another node; registered again", self.node_id)
            session.execute(
                update(Mailbox)
                .where(Mailbox.lease_node == self.node_id)
                .values(lease_expires_at=now + self.lease)
                .execution_options(synchronize_session=False)
            )
            session.execute(delete(SyncNode).where(SyncNode.seen_at < now - self.lease * FORGET_AFTER_LEASES))
            rows = session.execute(
                select(Mailbox.address, Mailbox.enabled).where(Mailbox.lease_node == self.node_id)
            ).all()

        # Leases taken by job threads during this transaction are kept; only
        # those held before it and gone now were lost.
        found = {address for address, _ in rows}
        with self._lock:
            for address in sorted(before - found):
                log.warning("mailbox %s: lease lost to another node", address, extra={"mailbox": address})
            self.held = (self.held - before) | found
            held = set(self.held)

        disabled = {address for address, enabled in rows if not enabled}
        excess = len(held - disabled) - self.fair_share()
        spare = sorted(held - disabled - set(busy))
        self.release(disabled | set(spare[:max(excess, 0)]))

    def fair_share(self) -> int:
        """Return how many mailboxes this node may hold.

        The enabled mailboxes are divided among the live nodes, and the
        remainder goes one each to the first nodes in id order. So 4
        mailboxes on 3 nodes split 2, 1, 1 rather than 2, 2, 0.
        """
        now = self.clock()
        with self.sessions() as session:
            mailboxes = session.scalar(select(func.count()).select_from(Mailbox).where(Mailbox.enabled.is_(True))) or 0
            nodes = sorted(
                session.scalars(
                    select(SyncNode.id).where(or_(SyncNode.id == self.node_id, SyncNode.seen_at >= now - self.lease))
                )
            )
        if self.node_id not in nodes:
            return max(math.ceil(mailboxes / max(len(nodes), 1)), 1)
        share, remainder = divmod(mailboxes, len(nodes))
        return share + (1 if nodes.index(self.node_id) < remainder else 0)

    def _holder(self, address: str) -> Claim:
        with self.sessions() as session:
            row = session.execute(
                select(Mailbox.lease_node, Mailbox.lease_expires_at).where(Mailbox.address == address)
            ).first()
        owner, expires_at = row if row is not None else (None, None)
        return Claim(held=False, owner=owner, expires_at=expires_at)

    def _forget(self, address: str) -> None:
        with self._lock:
            if address in self.held:
                log.warning("mailbox %s: lease lost to another node", address, extra={"mailbox": address})
                self.held.discard(address)

    def _is_dead(self, node: SyncNode, now: datetime) -> bool:
        if node.seen_at < now - self.lease:
            return True
        return node.hostname == self.hostname and not self.alive(node.pid)


def _changed(session: Session, statement: Update) -> int:
    """Run an UPDATE and return how many rows it changed."""
    result = session.execute(statement.execution_options(synchronize_session=False))
    assert isinstance(result, CursorResult)
    return result.rowcount


def lease_owners(session: Session, now: datetime | None = None) -> dict[str, tuple[str, datetime]]:
    """Return mailbox address → (node id, expiry) for every lease that has not run out at `now`."""
    now = now or utcnow()
    rows = session.execute(
        select(Mailbox.address, Mailbox.lease_node, Mailbox.lease_expires_at).where(
            and_(Mailbox.lease_node.is_not(None), Mailbox.lease_expires_at >= now)
        )
    )
    return {address: (node, expires) for address, node, expires in rows if node and expires}
