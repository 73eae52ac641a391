"""A test stand-in for graph-node (which cannot be installed here): serves the API graph-node
generates from infra/subgraph/schema.graphql (`first` <= 1000, `where` with `id_gt` and
comparisons, `orderBy`, `block: {hash | number | number_gte}`, `_meta`), fed from a real anvil.

Entities are built from the chain the way the subgraph's AssemblyScript mappings build them,
decoding logs with web3.py's `process_log` (not with the indexer's decoder, so the two are
checked against each other). Served in process (gql's LocalSchemaTransport) and over HTTP on
127.0.0.1, where it can answer 429 or too slowly on demand."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
from graphql import GraphQLError, GraphQLSchema, build_schema, graphql_sync, parse
from graphql.language import ObjectTypeDefinitionNode
from web3 import Web3

from indexer.decoding import Contracts
from indexer.graph import GRAPH_ENTITIES, PAGE_SIZE, plural
from infra.procs import free_port
from settlement.contracts import load_artifact

SUBGRAPH_SCHEMA = Path(__file__).resolve().parents[2] / "infra" / "subgraph" / "schema.graphql"
SCALARS = ("BigInt", "Bytes", "BigDecimal", "Int8")


def api_schema_sdl(subgraph_schema: str) -> str:
    """The query API graph-node derives from a subgraph schema (the parts the indexer uses)."""
    doc = parse(subgraph_schema)
    out = [f"scalar {s}" for s in SCALARS]
    out += [
        "enum OrderDirection { asc desc }",
        "input Block_height { hash: Bytes number: Int number_gte: Int }",
        "type _Block_ { hash: Bytes number: Int! timestamp: Int }",
        "type _Meta_ { block: _Block_! deployment: String! hasIndexingErrors: Boolean! }",
    ]
    query = ["_meta(block: Block_height): _Meta_"]
    for node in doc.definitions:
        if not isinstance(node, ObjectTypeDefinitionNode):
            continue
        name = node.name.value
        fields = []
        filters = []
        for f in node.fields:
            ftype = f.type.type.name.value if hasattr(f.type, "type") else f.type.name.value  # type: ignore[attr-defined]
            fields.append(f"{f.name.value}: {ftype}!")
            for op in ("", "_not", "_gt", "_lt", "_gte", "_lte"):
                filters.append(f"{f.name.value}{op}: {ftype}")
            filters += [f"{f.name.value}_in: [{ftype}!]", f"{f.name.value}_not_in: [{ftype}!]"]
        out.append(f"type {name} {{ {' '.join(fields)} }}")
        out.append(f"enum {name}_orderBy {{ {' '.join(f.name.value for f in node.fields)} }}")
        out.append(f"input {name}_filter {{ {' '.join(filters)} }}")
        query.append(f"{name[0].lower() + name[1:]}(id: ID!, block: Block_height): {name}")
        query.append(
            f"{plural(name)}(skip: Int = 0, first: Int = 100, orderBy: {name}_orderBy, "
            f"orderDirection: OrderDirection, where: {name}_filter, block: Block_height): [{name}!]!"
        )
    out.append(f"type Query {{ {' '.join(query)} }}")
    return "\n".join(out)


def api_schema() -> GraphQLSchema:
    return build_schema(api_schema_sdl(SUBGRAPH_SCHEMA.read_text()))


def _gql_value(abi_type: str, value: Any) -> Any:
    if abi_type == "address":
        return str(value).lower()
    if abi_type == "uint8":
        return int(value)
    if abi_type.startswith(("uint", "int")):
        return str(value)
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return value


class GraphNodeStandIn:
    def __init__(self, w3: Web3, contracts: Contracts) -> None:
        self.w3 = w3
        self.contracts = contracts
        self.schema = api_schema()
        self.lag_blocks = 0
        self.has_indexing_errors = False
        #: entities the stand-in leaves out (to make it disagree with the chain)
        self.dropped: set[str] = set()
        self.status_429 = 0
        self.delay_s = 0.0
        self.served_429 = 0
        self._synced_head: tuple[int, str] = (-1, "")
        self._rows: dict[str, list[dict[str, Any]]] = {}
        self._hashes: dict[int, str] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._attach()

    # -- the data ------------------------------------------------------------------------------
    def _sync(self) -> int:
        """Entities of the chain up to head - lag_blocks (rebuilt when the chain moved)."""
        with self._lock:
            latest = self.w3.eth.get_block("latest")
            key = (int(latest["number"]), latest["hash"].to_0x_hex())
            if key != self._synced_head:
                self._rebuild(key[0])
                self._synced_head = key
            return max(0, key[0] - self.lag_blocks)

    def _rebuild(self, head: int) -> None:
        c = self.contracts
        factory = [c.chequebook_factory] if c.chequebook_factory else []
        sources = {
            "RealmStaking": [c.staking],
            "ChequebookFactory": factory,
            # the FactoryChequebook template: every chequebook the factory created (by `head`)
            "Chequebook": list(
                {a.lower(): a for a in [*c.chequebooks, *self._created(factory, head)]}.values()
            ),
            "EpochSettlement": [c.settlement],
            "WMPToken": [c.token],
        }
        rows: dict[str, list[dict[str, Any]]] = {e: [] for e in GRAPH_ENTITIES}
        for entity, (artifact, event_name) in GRAPH_ENTITIES.items():
            abi = load_artifact(artifact)["abi"]
            item = next(i for i in abi if i["type"] == "event" and i["name"] == event_name)
            for address in sources[artifact]:
                contract = self.w3.eth.contract(address=Web3.to_checksum_address(address), abi=abi)
                event = getattr(contract.events, event_name)()
                for log in event.get_logs(from_block=0, to_block=head):
                    rows[entity].append(self._entity(item, log))
        self._rows = rows
        self._hashes = {n: self.w3.eth.get_block(n)["hash"].to_0x_hex() for n in range(head + 1)}

    def _created(self, factory: list[str], head: int) -> list[str]:
        abi = load_artifact("ChequebookFactory")["abi"]
        out = []
        for address in factory:
            contract = self.w3.eth.contract(address=Web3.to_checksum_address(address), abi=abi)
            logs = contract.events.ChequebookCreated().get_logs(from_block=0, to_block=head)
            out += [str(log["args"]["chequebook"]) for log in logs]
        return out

    @staticmethod
    def _entity(item: dict[str, Any], log: Any) -> dict[str, Any]:
        row = {
            "id": log["blockHash"].to_0x_hex() + f"{log['logIndex']:08x}",
            "contract": str(log["address"]).lower(),
            "blockNumber": str(log["blockNumber"]),
            "blockHash": log["blockHash"].to_0x_hex(),
            "logIndex": str(log["logIndex"]),
            "txHash": log["transactionHash"].to_0x_hex(),
        }
        for p in item["inputs"]:
            value = log["args"][p["name"]]
            if p["type"] == "tuple":
                for i, comp in enumerate(p["components"]):
                    v = value[comp["name"]] if hasattr(value, "keys") else value[i]
                    row[comp["name"]] = _gql_value(comp["type"], v)
            else:
                row[p["name"]] = _gql_value(p["type"], value)
        return row

    # -- the API ---------------------------------------------------------------------------------
    def _pinned(self, block: dict[str, Any] | None) -> int:
        indexed = self._sync()
        if not block:
            return indexed
        if block.get("hash"):
            number = next((n for n, h in self._hashes.items() if h == block["hash"]), None)
            if number is None or number > indexed:
                raise GraphQLError(f"block {block['hash']} not found")
            return number
        if block.get("number") is not None:
            if block["number"] > indexed:
                raise GraphQLError(
                    f"Failed to decode `block.number` value: subgraph has only indexed up to block "
                    f"number {indexed} and data for block number {block['number']} is therefore "
                    "not yet available"
                )
            return int(block["number"])
        if block.get("number_gte") is not None and block["number_gte"] > indexed:
            raise GraphQLError(
                f"subgraph has only indexed up to block number {indexed} and data for block "
                f"number {block['number_gte']} is therefore not yet available"
            )
        return indexed

    def _attach(self) -> None:
        query = self.schema.query_type
        assert query is not None

        def meta(_: Any, info: Any, block: dict[str, Any] | None = None) -> dict[str, Any]:
            number = self._pinned(block)
            return {
                "block": {"number": number, "hash": self._hashes.get(number), "timestamp": None},
                "deployment": "meshledger-standin",
                "hasIndexingErrors": self.has_indexing_errors,
            }

        query.fields["_meta"].resolve = meta
        for entity in GRAPH_ENTITIES:
            query.fields[plural(entity)].resolve = self._collection(entity)

    def _collection(self, entity: str) -> Any:
        def resolve(
            _: Any,
            info: Any,
            first: int = 100,
            skip: int = 0,
            orderBy: str | None = None,  # noqa: N803 (GraphQL argument names)
            orderDirection: str | None = None,  # noqa: N803
            where: dict[str, Any] | None = None,
            block: dict[str, Any] | None = None,
        ) -> list[dict[str, Any]]:
            if not 0 <= first <= PAGE_SIZE:
                raise GraphQLError(
                    f"The `first` argument must be between 0 and {PAGE_SIZE}, but is {first}"
                )
            pinned = self._pinned(block)
            if entity in self.dropped:
                return []
            rows = [r for r in self._rows[entity] if int(r["blockNumber"]) <= pinned]
            rows = [r for r in rows if _matches(r, where or {})]
            key = orderBy or "id"
            rows.sort(key=lambda r: _sort_key(r[key]), reverse=orderDirection == "desc")
            return rows[skip : skip + first]

        return resolve

    # -- HTTP --------------------------------------------------------------------------------------
    def serve(self) -> str:
        stand_in = self
        port = free_port()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if stand_in.status_429 > 0:
                    stand_in.status_429 -= 1
                    stand_in.served_429 += 1
                    self.send_response(429)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if stand_in.delay_s:
                    time.sleep(stand_in.delay_s)
                result = graphql_sync(
                    stand_in.schema, body["query"], variable_values=body.get("variables")
                )
                reply = orjson.dumps(result.formatted)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{port}"

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _sort_key(value: Any) -> Any:
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value


def _matches(row: dict[str, Any], where: dict[str, Any]) -> bool:
    for key, want in where.items():
        field, _, op = key.partition("_")
        if field not in row:  # e.g. blockNumber_gte: the field name has no underscore
            return False
        have = _sort_key(row[field])
        want_v = [_sort_key(w) for w in want] if isinstance(want, list) else _sort_key(want)
        ok = {
            "": lambda h, w: h == w,
            "not": lambda h, w: h != w,
            "gt": lambda h, w: h > w,
            "lt": lambda h, w: h < w,
            "gte": lambda h, w: h >= w,
            "lte": lambda h, w: h <= w,
            "in": lambda h, w: h in w,
            "not_in": lambda h, w: h not in w,
        }[op](have, want_v)
        if not ok:
            return False
    return True
