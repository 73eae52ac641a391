"""The Graph source with the real gql client against a graph-node stand-in fed from a real anvil
(in process via LocalSchemaTransport, over HTTP for 429s and timeouts)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from gql.transport.local_schema import LocalSchemaTransport
from graph_node import GraphNodeStandIn, api_schema
from graphql import parse, validate
from indexer_harness import Harness, wait_for
from mesh_chain import MeshChain, busy_chain

from domain.events import ChainHead, Event, event_to_dict
from indexer.graph import GraphSource, SubgraphIndexingError, all_queries, entity_fields
from indexer.service import SyncConfig

pytestmark = pytest.mark.integration

MESHLEDGER = str(Path(sys.executable).parent / "meshledger")


def chain_events(events: list[Event]) -> list[dict[str, object]]:
    return [event_to_dict(e) for e in events if not isinstance(e, ChainHead)]


def graph_source(
    stand_in: GraphNodeStandIn, mesh: MeshChain, url: str | None = None
) -> GraphSource:
    endpoint = url or LocalSchemaTransport(stand_in.schema)
    return GraphSource(endpoint, mesh.contracts, 42161, timeout_s=1, schema=stand_in.schema)


def test_every_query_is_valid_against_the_subgraph_schema() -> None:
    schema = api_schema()
    for query in all_queries():
        assert validate(schema, parse(query)) == [], query
    # the entity fields the source asks for are exactly the subgraph's
    for entity in ("Staked", "RealmRegistered", "Transfer"):
        assert set(entity_fields(entity)) == set(schema.get_type(entity).fields)  # type: ignore[union-attr]


def test_graph_source_emits_what_the_rpc_source_emits(harness: Harness, tmp_path: Path) -> None:
    mesh = harness.mesh
    busy_chain(mesh)
    head = mesh.head()
    harness.sync_to(head)
    from_rpc = chain_events(harness.events())

    stand_in = GraphNodeStandIn(mesh.w3, mesh.contracts)
    via_graph = Harness(mesh, harness.broker, tmp_path / "graph", harness.sync)
    via_graph.sync_to(head, source=graph_source(stand_in, mesh))
    assert chain_events(via_graph.events()) == from_rpc
    assert len(from_rpc) > 30


def test_indexing_errors_are_refused_and_a_lagging_subgraph_is_not_trusted_ahead(
    harness: Harness,
) -> None:
    mesh = harness.mesh
    busy_chain(mesh)
    stand_in = GraphNodeStandIn(mesh.w3, mesh.contracts)
    stand_in.has_indexing_errors = True
    with pytest.raises(SubgraphIndexingError):
        harness.sync_to(mesh.head(), source=graph_source(stand_in, mesh))

    stand_in.has_indexing_errors = False
    stand_in.lag_blocks = 5
    source = graph_source(stand_in, mesh)
    ix = harness.indexer(source)
    stop = threading.Event()
    runner = threading.Thread(target=ix.run, args=(stop,))
    runner.start()
    try:
        wait_for(
            lambda: ix.cp is not None and ix.checkpoint.cursor_block == mesh.head() - 5, 30, "sync"
        )
        time.sleep(0.3)
        assert ix.checkpoint.cursor_block == mesh.head() - 5 == source.seen_block
    finally:
        stop.set()
        runner.join(timeout=30)


def test_over_http_429s_and_timeouts_are_waited_out(harness: Harness) -> None:
    mesh = harness.mesh
    busy_chain(mesh)
    stand_in = GraphNodeStandIn(mesh.w3, mesh.contracts)
    url = stand_in.serve()
    try:
        harness.sync = SyncConfig(confirmations=0, poll_interval_s=0.05, retry_backoff_max_s=0.2)
        stand_in.status_429 = 3
        ix = harness.indexer(graph_source(stand_in, mesh, url))
        stop = threading.Event()
        runner = threading.Thread(target=ix.run, args=(stop,))
        runner.start()
        try:
            wait_for(
                lambda: ix.cp is not None and ix.checkpoint.cursor_block == mesh.head(), 60, "sync"
            )
            assert stand_in.served_429 == 3
            stand_in.delay_s = 1.5  # the client gives up after 1 s
            mesh.mine(2)
            time.sleep(2)
            assert ix.checkpoint.cursor_block < mesh.head() and runner.is_alive()
            stand_in.delay_s = 0
            wait_for(lambda: ix.checkpoint.cursor_block == mesh.head(), 60, "resume")
        finally:
            stop.set()
            runner.join(timeout=30)
    finally:
        stand_in.close()


def test_verify_prints_every_difference(harness: Harness, tmp_path: Path) -> None:
    mesh = harness.mesh
    busy_chain(mesh)
    stand_in = GraphNodeStandIn(mesh.w3, mesh.contracts)
    url = stand_in.serve()
    c = mesh.contracts
    config = tmp_path / "indexer.toml"
    config.write_text(
        f'rpc = "{mesh.anvil.url}"\nchain_id = 42161\n[contracts]\nstaking = "{c.staking}"\n'
        f'settlement = "{c.settlement}"\ntoken = "{c.token}"\nchequebooks = ["{c.chequebooks[0]}"]\n'
        f'chequebook_factory = "{c.chequebook_factory}"\n'
    )
    block = mesh.head()
    args = [
        MESHLEDGER,
        "indexer",
        "verify",
        "--config",
        str(config),
        "--graph",
        url,
        "--rpc",
        mesh.anvil.url,
        "--block",
        str(block),
    ]
    try:
        same = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
        assert same.returncode == 0, same.stdout + same.stderr
        assert "no differences" in same.stdout
        stand_in.dropped = {"Slashed"}
        differ = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
        assert differ.returncode == 1, differ.stdout + differ.stderr
        assert "only in rpc" in differ.stdout and "StakeChanged" in differ.stdout
        assert differ.stdout.count("only in rpc") == 1
    finally:
        stand_in.close()
