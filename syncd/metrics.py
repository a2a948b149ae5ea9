"""Prometheus metrics of the sync passes, and the daemon's /metrics endpoint.

Every metric lives in REGISTRY, syncd's own registry rather than
prometheus_client's global one, so the endpoint shows only syncd's metrics
and the process collectors added here, and tests read values from it.
Mailbox addresses are label values, so the endpoint shows which mailboxes
syncd serves to anyone who can connect to it.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable
from typing import Any
from wsgiref.simple_server import WSGIServer

import requests
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

from syncd.errors import ConfigError
from syncd.mail import Outcome
from syncd.settings import MetricsSettings

log = logging.getLogger("syncd.metrics")

REGISTRY = CollectorRegistry()
# Memory, CPU time, open files and the Python version of the process, as
# every Prometheus client library exports them.
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

#: Upper bounds in seconds of the pass duration buckets: an idle pass takes
#: about a second, a first pass over a full folder many minutes.
PASS_DURATION_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

ITEMS = Counter(
    "syncd_items",
    "Items recorded by outcome (filed, unmatched, failed, duplicate); the items seen are the sum over outcomes.",
    ["mailbox", "outcome"],
    registry=REGISTRY,
)
PASS_DURATION = Histogram(
    "syncd_pass_duration_seconds",
    "Duration of a pass over a mailbox that finished or failed.",
    ["mailbox"],
    buckets=PASS_DURATION_BUCKETS,
    registry=REGISTRY,
)
PASSES = Counter(
    "syncd_passes", "Passes over a mailbox by result: ok or failed.", ["mailbox", "result"], registry=REGISTRY
)
BACKEND_REQUESTS = Counter(
    "syncd_backend_requests",
    "HTTP requests to Exchange (EWS) or Microsoft Graph that got a response, token requests excluded.",
    ["mailbox", "backend"],
    registry=REGISTRY,
)
RETRIES = Counter(
    "syncd_backend_retries",
    "Backend calls tried again after throttling or a time-out.",
    ["mailbox"],
    registry=REGISTRY,
)
LEASE_HELD = Gauge(
    "syncd_mailbox_lease_held", "1 while this node holds the lease on the mailbox, else 0.", ["mailbox"],
    registry=REGISTRY,
)
FAILING = Gauge(
    "syncd_mailbox_failing", "1 while the last pass over the mailbox failed, else 0.", ["mailbox"],
    registry=REGISTRY,
)

#: A requests response hook.
ResponseHook = Callable[..., None]


def item_recorded(address: str, outcome: Outcome) -> None:
    """Count one item of the mailbox `address` with its outcome."""
    ITEMS.labels(address, outcome.value).inc()


def pass_finished(address: str, seconds: float, *, ok: bool) -> None:
    """Record a pass over `address` that took `seconds` and finished (`ok`) or failed."""
    # Creating every series of the mailbox at its first pass lets rate()
    # see the first increment of each, where a new series would hide it.
    for outcome in Outcome:
        ITEMS.labels(address, outcome.value)
    for result in ("ok", "failed"):
        PASSES.labels(address, result)
    RETRIES.labels(address)

    PASS_DURATION.labels(address).observe(seconds)
    PASSES.labels(address, "ok" if ok else "failed").inc()
    FAILING.labels(address).set(0 if ok else 1)


def backend_retry(address: str) -> None:
    """Count one retry of a backend call for the mailbox `address`."""
    RETRIES.labels(address).inc()


def lease_held(address: str, held: bool) -> None:
    """Record whether this node holds the lease on the mailbox `address`."""
    LEASE_HELD.labels(address).set(1 if held else 0)


def forget_mailbox(address: str) -> None:
    """Drop the state gauges of a mailbox that is no longer enrolled or enabled.

    The counters stay, because Prometheus treats a counter that vanishes and
    comes back as a reset.
    """
    for gauge in (LEASE_HELD, FAILING):
        try:
            gauge.remove(address)
        except KeyError:
            pass


def request_counter(backend: str, address: str | None = None) -> ResponseHook:
    """Return a requests response hook that counts each response as a request of `backend`.

    With `address` None, the hook counts for the mailbox named in the
    request's X-AnchorMailbox header. exchangelib shares one session pool
    between the mailboxes of a service account and sets that header on every
    request for a mailbox, so responses without it, such as token requests,
    are not counted.
    """

    def count(response: requests.Response, *_args: Any, **_kwargs: Any) -> None:
        mailbox = address or response.request.headers.get("X-AnchorMailbox")
        if mailbox:
            BACKEND_REQUESTS.labels(mailbox, backend).inc()

    return count


class MetricsEndpoint:
    """The /metrics HTTP endpoint, served on a thread of its own."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def url(self) -> str:
        address, port = self._server.server_address[:2]
        host = address.decode() if isinstance(address, bytes) else str(address)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}/metrics"

    def close(self) -> None:
        """Stop serving requests and close the listening socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def serve(settings: MetricsSettings) -> MetricsEndpoint | None:
    """Start the /metrics endpoint when the settings enable it; return it, or None when disabled.

    Raises ConfigError when the address and port cannot be bound.
    """
    if not settings.enabled:
        return None
    try:
        server, thread = start_http_server(settings.port, settings.address, registry=REGISTRY)
    except OSError as exc:
        raise ConfigError(
            f"metrics endpoint cannot listen on {settings.address} port {settings.port}: "
            f"{exc.strerror or exc}; set metrics.port to a free port, or metrics.enabled = false"
        ) from exc

    endpoint = MetricsEndpoint(server, thread)
    if not ipaddress.ip_address(settings.address).is_loopback:
        log.warning(
            "metrics endpoint %s is reachable from the network, and its labels name every mailbox; "
            "set metrics.address = \"127.0.0.1\" unless a firewall limits who can connect",
            endpoint.url,
        )
    log.info("metrics served at %s", endpoint.url)
    return endpoint
