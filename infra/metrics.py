"""Prometheus metrics and health of every service: collectors that read a service's own counters
when scraped (nothing added to a hot path), and the loopback endpoint serving /metrics, /health.

Each service builds one `CollectorRegistry` of its own (several services may share a process in
tests) from the `*_metrics` functions below; `/health` runs the service's dependency checks
(broker, chain) and answers 200 with every check "ok", else 503 naming what failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from infra.loopback import LoopbackServer, Reply

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: seconds a dependency check may take before it counts as failed
CHECK_TIMEOUT_S = 2.0

#: a dependency check: None when healthy, else what is wrong
HealthCheck = Callable[[], str | None]


class ScrapeCollector(Collector):
    """Metric families built by `read()` at each scrape, from counters the service keeps anyway."""

    def __init__(self, read: Callable[[], Iterable[Metric]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        yield from self._read()


def gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc)
    if value is not None:
        family.add_metric([], value)
    return family


def labelled(
    kind: type[GaugeMetricFamily] | type[CounterMetricFamily],
    name: str,
    doc: str,
    labels: list[str],
    values: Mapping[tuple[str, ...], float],
) -> Metric:
    family = kind(name, doc, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(list(key), value)
    return family


def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def registry_of(*reads: Callable[[], Iterable[Metric]]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    for read in reads:
        registry.register(ScrapeCollector(read))
    return registry


# -- health checks ---------------------------------------------------------------------------------


def tcp_check(hostport: str, name: str = "broker") -> HealthCheck:
    """Healthy while `host:port` (the first of a comma-separated bootstrap list) accepts."""
    host, _, port = hostport.split(",")[0].rpartition(":")

    def check() -> str | None:
        try:
            with socket.create_connection((host, int(port)), timeout=CHECK_TIMEOUT_S):
                return None
        except OSError as exc:
            return f"{name} {hostport} unreachable: {exc}"

    return check


def rpc_check(url: str) -> HealthCheck:
    """Healthy while the chain's JSON-RPC answers eth_blockNumber."""

    def check() -> str | None:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []})
        request = urllib.request.Request(
            url, body.encode(), {"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=CHECK_TIMEOUT_S) as resp:
                answer = json.loads(resp.read())
        except (OSError, ValueError) as exc:
            return f"chain {url} unreachable: {exc}"
        return None if "result" in answer else f"chain {url}: {answer.get('error')}"

    return check


@dataclass(frozen=True)
class Health:
    ok: bool
    checks: dict[str, str]

    def body(self) -> dict[str, Any]:
        return {"status": "ok" if self.ok else "unhealthy", "checks": self.checks}


def health_of(checks: Mapping[str, HealthCheck]) -> Health:
    results = {name: check() or "ok" for name, check in checks.items()}
    return Health(all(r == "ok" for r in results.values()), results)


def serve_metrics_path(
    path: str, registry: CollectorRegistry, checks: Mapping[str, HealthCheck]
) -> tuple[int, str, bytes] | None:
    """The answer to GET `path` if it is /metrics or /health (status, content type, body)."""
    if path == "/metrics":
        return 200, CONTENT_TYPE, generate_latest(registry)
    if path == "/health":
        health = health_of(checks)
        return 200 if health.ok else 503, "application/json", json.dumps(health.body()).encode()
    return None


class MetricsServer(LoopbackServer):
    """/metrics and /health of one service on a loopback port (0: a free one)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        checks: Mapping[str, HealthCheck],
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        served = (registry, dict(checks))

        def respond(path: str) -> Reply:
            answer = serve_metrics_path(path, *served)
            return answer or (404, "text/plain", b"/metrics or /health\n")

        super().__init__(respond, host, port)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of `url`/metrics, keyed by (sample name, sorted labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=CHECK_TIMEOUT_S * 5) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def read_health(url: str) -> tuple[int, dict[str, Any]]:
    """`url`/health: the HTTP status and the JSON body (status, checks)."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=CHECK_TIMEOUT_S * 5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def parse_listen(value: str) -> tuple[str, int]:
    """`127.0.0.1:9101` or `:9101` (loopback) or `9101`."""
    host, _, port = value.rpartition(":")
    return host or "127.0.0.1", int(port)


# -- what each service exposes ---------------------------------------------------------------------


def emitter_metrics(emitter: Any, prefix: str = "meshledger_emitter") -> Iterator[Metric]:
    """An in-process `ledger.emitter.Emitter`: its stats() at scrape time."""
    stats = emitter.stats()
    yield counter(
        f"{prefix}_sealed_records", "Records sealed into the spool.", stats["sealed_records"]
    )
    yield counter(f"{prefix}_sealed_events", "Events sealed into records.", stats["sealed_events"])
    yield counter(
        f"{prefix}_acked_records", "Records the broker acknowledged.", stats["acked_records"]
    )
    yield counter(
        f"{prefix}_dead_records", "Records refused for good (dead-lettered).", stats["dead_records"]
    )
    yield counter(
        f"{prefix}_send_errors", "Failed exchanges with the broker.", stats["send_errors"]
    )
    yield gauge(
        f"{prefix}_records_in_flight",
        "Sealed records not acknowledged yet.",
        stats["pending_records"],
    )
    yield gauge(
        f"{prefix}_spool_bytes",
        "Spooled bytes not acknowledged by the broker.",
        stats["unacked_bytes"],
    )
    reachable = stats["broker_reachable"]
    yield gauge(
        f"{prefix}_broker_reachable",
        "1 if the last exchange with the broker succeeded, 0 if it failed (absent before any).",
        None if reachable is None else float(reachable),
    )


def directory_bytes(path: Path) -> int:
    """Bytes of the files under `path` (0 if it does not exist)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_size
    return total


def projector_metrics(service: Any) -> Iterator[Metric]:
    """A running `ledger.service.LedgerService`."""
    progress = service.progress
    projector = service.projector
    yield counter("meshledger_projector_records_applied", "Records applied.", progress.records)
    yield counter("meshledger_projector_events_applied", "Events applied.", progress.events)
    yield labelled(
        CounterMetricFamily,
        "meshledger_projector_rejected_records",
        "Records rejected (sent to mesh.dead), by reason; stored with the tables.",
        ["reason"],
        {(reason,): n for reason, n in list(projector.rejected.items())},
    )
    yield labelled(
        GaugeMetricFamily,
        "meshledger_projector_waiting_records",
        "Records that cannot be decided yet, by what they wait for.",
        ["reason"],
        {(reason,): n for reason, n in list(progress.waits.items())},
    )
    offsets = dict(list(projector.offsets.items()))
    yield labelled(
        GaugeMetricFamily,
        "meshledger_projector_lag_records",
        "Records in the partition not yet decided: the broker's high watermark minus the "
        "committed offset.",
        ["topic", "partition"],
        {
            (topic, str(part)): max(high - offsets.get((topic, part), 0), 0)
            for (topic, part), high in list(service.high_watermarks.items())
        },
    )
    head = projector.chain_watermark()
    yield gauge(
        "meshledger_projector_chain_head",
        "The chain head the projector knows (least among the trusted indexers; absent before).",
        head if head >= 0 else None,
    )
    yield counter(
        "meshledger_projector_dead_letter_stalls",
        "Times a commit waited because mesh.dead did not acknowledge a dead letter.",
        service.dead_letter_stalls,
    )
    yield counter(
        "meshledger_projector_dead_letters_failed",
        "Dead letters the broker refused for good (logged; the record stays at its origin).",
        service.dead_letters_failed,
    )
    yield from service.commit_seconds.collect()
    if service.emitter is not None:
        yield from emitter_metrics(service.emitter, "meshledger_projector_emitter")


def router_metrics(service: Any) -> Iterator[Metric]:
    """A running `router_core.service.RouterService` (read on the scrape thread: only sizes and
    counters the loop keeps anyway, copied before iterating)."""
    router = service.router
    realms = dict(router.realms) if router is not None else {}
    yield labelled(
        GaugeMetricFamily,
        "meshledger_router_sessions",
        "Established sessions, by realm.",
        ["realm"],
        {(name,): len(realm.sessions) for name, realm in realms.items()},
    )
    handoff = service.handoff
    if handoff is not None:
        yield labelled(
            CounterMetricFamily,
            "meshledger_router_messages_routed",
            "Metered messages sealed into the ledger, by kind (counted by the metering child).",
            ["kind"],
            {(kind,): n for kind, n in list(handoff.routed_by_kind.items())},
        )
        yield gauge(
            "meshledger_router_metering_buffer_items",
            "Metered items handed over and not yet sealed by the emitter child.",
            handoff.waiting(),
        )
        yield gauge(
            "meshledger_router_metering_paused",
            "1 while reads are paused for back-pressure.",
            float(handoff.paused),
        )
        yield counter(
            "meshledger_router_metering_pauses", "Back-pressure pauses so far.", handoff.pauses
        )
    if service.spool_dir is not None:
        yield gauge(
            "meshledger_router_spool_bytes",
            "Bytes in the metering child's spool directory.",
            directory_bytes(service.spool_dir),
        )
    swap = router.swap if router is not None else None
    if swap is not None:
        peers = list(swap._live.values())
        near = {"payment": 0, "disconnect": 0}
        for ps in peers:
            debt = ps.debt
            if debt >= ps.payment_threshold:
                near["payment"] += 1
            if debt * 10 >= ps.disconnect_threshold * 9:
                near["disconnect"] += 1
        yield gauge("meshledger_router_swap_peers", "Peers with a live SWAP account.", len(peers))
        yield labelled(
            GaugeMetricFamily,
            "meshledger_router_swap_peers_near_threshold",
            "Peers whose debt reached the payment threshold, or 90% of the disconnect threshold.",
            ["threshold"],
            {(k,): v for k, v in near.items()},
        )
        yield labelled(
            CounterMetricFamily,
            "meshledger_router_cheques",
            "Cheques received over mesh.swap.cheque, by outcome (accepted or the refusal reason).",
            ["outcome"],
            {(k,): v for k, v in list(swap.cheque_outcomes.items())},
        )
    cashout = service.cashout
    if cashout is not None:
        yield gauge(
            "meshledger_router_cashout_pending_cheques",
            "Accepted cheques with value still to cash.",
            len(cashout.pending()),
        )
        yield gauge(
            "meshledger_router_cashout_parked_cheques",
            "Cheques the chain refused, kept for an operator.",
            len(cashout.parked()),
        )


def indexer_metrics(indexer: Any) -> Iterator[Metric]:
    """A running `indexer.service.Indexer` (checkpoint and emitter read at scrape time)."""
    yield from emitter_metrics(indexer.emitter, "meshledger_indexer_emitter")
    cp = indexer.cp
    if cp is None:  # not opened yet: no checkpoint to read
        return
    head = cp.head if cp.head >= 0 else None
    yield gauge("meshledger_indexer_head_block", "The chain head last seen.", head)
    yield gauge(
        "meshledger_indexer_safe_block", "The head minus the confirmation depth.", indexer.safe_head
    )
    yield gauge("meshledger_indexer_emitted_block", "The last block emitted.", cp.cursor_block)
    yield gauge(
        "meshledger_indexer_lag_blocks",
        "Head minus the last emitted block.",
        None if head is None else max(head - cp.cursor_block, 0),
    )
    yield counter("meshledger_indexer_events_emitted", "Events emitted.", cp.events_emitted)
    yield counter("meshledger_indexer_reorgs", "Reorgs handled by this process.", indexer.reorgs)
    last = cp.last_reorg or {}
    yield gauge(
        "meshledger_indexer_last_reorg_depth", "Depth of the last reorg.", last.get("depth")
    )
    yield gauge(
        "meshledger_indexer_last_reorg_timestamp_seconds",
        "When the last reorg was handled (Unix time).",
        last.get("at_unix"),
    )


@dataclass
class SettleRun:
    """What one `meshledger settle` run did; written as a textfile for node_exporter's textfile
    collector (settle is a job, not a server: nothing would be there to scrape)."""

    epochs_due: int = 0
    epochs_settled: int = 0
    tx_pending: int = 0
    gas_spent: int = 0
    finished_unix: float = 0.0

    def metrics(self) -> Iterator[Metric]:
        yield gauge(
            "meshledger_settle_epochs_due", "Closed epochs due at the run's start.", self.epochs_due
        )
        yield gauge(
            "meshledger_settle_epochs_settled", "Epochs settled by the run.", self.epochs_settled
        )
        yield gauge(
            "meshledger_settle_tx_pending",
            "Transactions sent and not confirmed when the run ended (journal).",
            self.tx_pending,
        )
        yield gauge(
            "meshledger_settle_gas_spent", "Gas used by the run's transactions.", self.gas_spent
        )
        yield gauge(
            "meshledger_settle_last_run_timestamp_seconds",
            "When the run ended.",
            self.finished_unix,
        )

    def write(self, path: Path) -> None:
        from prometheus_client import write_to_textfile

        self.finished_unix = time.time()
        write_to_textfile(str(path), registry_of(self.metrics))
