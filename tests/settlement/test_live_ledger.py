"""`meshledger settle` on the live ledger: a real broker, simulated sources, a real projector (its
query endpoint) and the log's PayoutsComputed read back through `ledger.logreader`."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _live_ledger import (
    HandSource,
    LiveSources,
    feed_epoch_zero,
    payouts_event,
    produce,
    start_projector,
    stop_process,
    wait_for,
)
from _submitter_chain import SETTLE_CHAIN_ID
from _submitter_settle import balances, budget, deploy, fund_realm, job_key
from click.testing import CliRunner, Result
from eth_typing import ChecksumAddress
from prometheus_client.parser import text_string_to_metric_families
from web3 import Web3

from domain.economics import payout_digest
from domain.envelope import ZERO_HASH
from infra.anvil import Anvil
from infra.broker import Broker, start_broker
from ledger.logreader import (
    ConflictingPayouts,
    LedgerLog,
    SourceForked,
    UnverifiablePayouts,
)
from ledger.query import QueryClient
from ledger.service import LedgerService, ServiceConfig, trust_from
from ledger.simulate import new_signer
from settlement import cli
from settlement.contracts import Stack
from settlement.job import EXIT_NOT_DUE
from settlement.journal import Journal, TxState

pytestmark = pytest.mark.integration
_realm_numbers = itertools.count()


@pytest.fixture(scope="module")
def ledger_broker() -> Iterator[Broker]:
    """A broker of this module's own: the log reader and the projector read whole topics."""
    node = start_broker()
    yield node
    node.stop()


@pytest.fixture(scope="module")
def live(
    ledger_broker: Broker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """Epoch 0 of a realm closed by `meshledger project` (a process): its PayoutsComputed is on
    the log and its payouts are served at the URL in DB.query."""
    tmp = tmp_path_factory.mktemp("live-ledger")
    sources = feed_epoch_zero(ledger_broker.bootstrap, tmp, "settle-live")
    db_path = tmp / "ledger.duckdb"
    projector = start_projector(ledger_broker.bootstrap, db_path, sources)
    try:
        marker = Path(f"{db_path}.query")
        wait_for("projector query marker", lambda: marker.exists() or projector.poll() is not None)
        assert projector.poll() is None, projector.stderr.read().decode()  # type: ignore[union-attr]
        query = QueryClient(marker.read_text().strip())
        wait_for(
            "epoch 0 closed", lambda: any(r["epoch"] == 0 for r in query.epochs(sources.realm))
        )
        log = LedgerLog(ledger_broker.bootstrap, [sources.ledger.address])

        def logged() -> bool:
            log.scan()
            return log.payouts_computed(sources.realm, 0) is not None

        wait_for("PayoutsComputed on the log", logged)
        yield {"sources": sources, "db_path": db_path, "query": query, "tmp": tmp}
        assert projector.poll() is None, "the projector died during the tests"
    finally:
        stop_process(projector)


@pytest.fixture
def fresh_stack(w3: Web3) -> Stack:
    """A settlement deployment of the test's own: the live realm is paid once per deployment."""
    return deploy(w3)


def chain_args(
    mining_anvil: Anvil, stack: Stack, w3: Web3, tmp_path: Path, bootstrap: str
) -> tuple[list[str], ChecksumAddress]:
    """`settle` arguments of a fresh poster key (and its address), without the ledger's."""
    key = job_key(w3, stack)
    key_file = tmp_path / "settle.key"
    key_file.write_text("0x" + bytes(key.key).hex())
    key_file.chmod(0o600)
    args = [
        "--rpc-url", mining_anvil.url,
        "--chain-id", str(SETTLE_CHAIN_ID),
        "--contract", stack.settlement.address,
        "--key-file", str(key_file),
        "--journal", str(tmp_path / "journal.sqlite"),
        "--spool-dir", str(tmp_path / "spool"),
        "--bootstrap", bootstrap,
        "--confirmations", "2",
    ]  # fmt: skip
    return args, key.address


def run_settle(*args: str) -> Result:
    return CliRunner().invoke(cli.settle, list(args))


def test_settle_pays_what_the_projector_computed(
    live: dict[str, Any],
    ledger_broker: Broker,
    mining_anvil: Anvil,
    w3: Web3,
    fresh_stack: Stack,
    tmp_path: Path,
) -> None:
    sources: LiveSources = live["sources"]
    payouts = live["query"].payouts(sources.realm, 0)
    assert {p.account for p in payouts} == {r.address for r in sources.routers}
    amounts = {p.account: p.amount for p in payouts}
    assert amounts[sources.routers[0].address] < amounts[sources.routers[1].address]  # 3 vs 7
    total = sum(amounts.values())
    fund_realm(w3, fresh_stack, sources.realm, total)
    args, _ = chain_args(mining_anvil, fresh_stack, w3, tmp_path, ledger_broker.bootstrap)

    metrics_file = tmp_path / "settle.prom"
    result = run_settle(  # the endpoint comes from DB.query
        *args,
        "--ledger-source", sources.ledger.address,
        "--db", str(live["db_path"]),
        "--all-due",
        "--metrics-file", str(metrics_file),
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"settled realm={sources.realm} epoch=0 root=0x")
    assert balances(fresh_stack, list(amounts)) == amounts
    assert budget(fresh_stack, sources.realm) == (total, total, total)
    # the run's metrics for node_exporter's textfile collector: gas as the receipts say
    confirmed = [
        tx for tx in Journal(tmp_path / "journal.sqlite").all() if tx.state == TxState.CONFIRMED
    ]
    gas = sum(int(w3.eth.get_transaction_receipt(tx.tx_hash)["gasUsed"]) for tx in confirmed)
    metrics = {
        s.name: s.value
        for f in text_string_to_metric_families(metrics_file.read_text())
        for s in f.samples
    }
    assert confirmed and metrics["meshledger_settle_gas_spent"] == gas
    assert metrics["meshledger_settle_epochs_due"] >= 1
    assert metrics["meshledger_settle_epochs_settled"] == 1
    assert metrics["meshledger_settle_tx_pending"] == 0


def test_payouts_that_do_not_hash_to_the_logged_digest_are_not_paid(
    live: dict[str, Any],
    ledger_broker: Broker,
    mining_anvil: Anvil,
    w3: Web3,
    fresh_stack: Stack,
    tmp_path: Path,
) -> None:
    sources: LiveSources = live["sources"]
    # a second projector (in this process) replays the log; then its payouts table is tampered
    service = LedgerService(
        ServiceConfig(
            bootstrap=ledger_broker.bootstrap,
            db_path=tmp_path / "tampered.duckdb",
            trust=trust_from([sources.ledger.address], [sources.indexer.address], []),
            dead_letters=False,
        )
    )
    try:
        url = f"http://127.0.0.1:{service.start_query_server()}"
        deadline = time.monotonic() + 60

        def replayed(svc: LedgerService) -> bool:
            assert time.monotonic() < deadline, f"epoch 0 not replayed: {svc.progress}"
            return svc.closed_epochs().get(sources.realm, -1) >= 0

        service.run(until=replayed)
        honest = QueryClient(url).payouts(sources.realm, 0)
        assert honest == live["query"].payouts(sources.realm, 0)
        victim = honest[0].account
        service.con.execute(
            "UPDATE payouts SET amount = amount + 1 WHERE realm = ? AND epoch = 0 AND account = ?",
            [sources.realm, victim],
        )
        tampered = QueryClient(url).payouts(sources.realm, 0)
        assert sum(p.amount for p in tampered) == sum(p.amount for p in honest) + 1
        fund_realm(w3, fresh_stack, sources.realm, 10**20)
        args, sender = chain_args(mining_anvil, fresh_stack, w3, tmp_path, ledger_broker.bootstrap)
        args += ["--ledger-source", sources.ledger.address, "--query-url", url]

        result = run_settle(*args, "--realm", sources.realm, "--epoch", "0")
    finally:
        service.close()

    assert result.exit_code == EXIT_NOT_DUE, result.output
    logged = payout_digest(sources.realm, 0, honest)
    assert f"payouts hash to {payout_digest(sources.realm, 0, tampered)}" in result.output
    assert f"the log says {logged}" in result.output
    assert balances(fresh_stack, [p.account for p in honest]) == {p.account: 0 for p in honest}
    assert budget(fresh_stack, sources.realm) == (10**20, 0, 0)
    assert w3.eth.get_transaction_count(sender) == 0


def test_settle_needs_a_trusted_ledger_key_and_an_endpoint(
    mining_anvil: Anvil, w3: Web3, fresh_stack: Stack, tmp_path: Path, ledger_broker: Broker
) -> None:
    args, _ = chain_args(mining_anvil, fresh_stack, w3, tmp_path, ledger_broker.bootstrap)
    result = run_settle(*args, "--all-due")
    assert result.exit_code == 2, result.output
    assert "no trusted ledger key" in result.output
    missing = tmp_path / "none.duckdb"
    ledger = new_signer().address
    result = run_settle(*args, "--ledger-source", ledger, "--db", str(missing), "--all-due")
    assert result.exit_code == 5, result.output
    assert f"no marker {missing}.query" in result.output


# -- the log reader ---------------------------------------------------------------------------------


def test_log_reader_believes_only_trusted_records_on_a_verified_chain(
    ledger_broker: Broker,
) -> None:
    realm = f"reader-{next(_realm_numbers)}"
    trusted, gapped, stranger = HandSource(), HandSource(), HandSource()
    first = trusted.next(payouts_event(realm, 0, "0x" + "0a" * 32))
    produce(
        ledger_broker.bootstrap,
        realm,
        [
            first,
            first,  # re-sent by the emitter after a restart: skipped
            trusted.claimed_by_another(stranger.signer, payouts_event(realm, 1, "0x" + "ff" * 32)),
            trusted.next(payouts_event(realm, 1, "0x" + "1a" * 32)),
            stranger.next(payouts_event(realm, 2, "0x" + "2a" * 32)),  # not a ledger key
            gapped.next(payouts_event(realm, 3, "0x" + "3a" * 32)),
            gapped.at(3, "0x" + "77" * 32, payouts_event(realm, 4, "0x" + "4a" * 32)),  # seq 2 lost
        ],
    )
    log = LedgerLog(ledger_broker.bootstrap, [trusted.address, gapped.address.lower()])

    found = {e: log.payouts_computed(realm, e) for e in range(4)}

    assert {e: p.digest if p else None for e, p in found.items()} == {
        0: "0x" + "0a" * 32,
        1: "0x" + "1a" * 32,
        2: None,
        3: "0x" + "3a" * 32,
    }
    assert (log.stats.duplicates, log.stats.bad_signature) == (1, 1)
    assert log.stats.gaps == {gapped.address: 2}
    with pytest.raises(UnverifiablePayouts, match=rf"{realm} epoch 4 .*\(seq 2 missing\)"):
        log.payouts_computed(realm, 4)


def test_log_reader_refuses_a_forked_or_contradicting_ledger(ledger_broker: Broker) -> None:
    realm = f"reader-{next(_realm_numbers)}"
    forked = HandSource()
    produce(
        ledger_broker.bootstrap,
        realm,
        [
            forked.at(1, ZERO_HASH, payouts_event(realm, 0, "0x" + "0a" * 32)),
            forked.at(1, ZERO_HASH, payouts_event(realm, 0, "0x" + "0b" * 32)),
        ],
    )
    with pytest.raises(SourceForked, match="two different records at seq 1"):
        LedgerLog(ledger_broker.bootstrap, [forked.address]).payouts_computed(realm, 0)

    one, two = HandSource(), HandSource()
    produce(
        ledger_broker.bootstrap,
        realm,
        [
            one.next(payouts_event(realm, 5, "0x" + "5a" * 32)),
            two.next(payouts_event(realm, 5, "0x" + "5b" * 32)),
        ],
    )
    log = LedgerLog(ledger_broker.bootstrap, [one.address, two.address])
    with pytest.raises(ConflictingPayouts, match=f"{realm} epoch 5"):
        log.payouts_computed(realm, 5)
