"""The Graph source: reads the meshledger subgraph (infra/subgraph) with the gql client and
produces the same domain events as the RPC source, for users with a subgraph and no archive node.

Every page is `first: 1000` with an `id_gt` cursor and pinned to one block (`block: {hash}`), so
a chunk is one consistent snapshot; `_meta(block: {number_gte: seen})` never lets the subgraph's
head move backwards; a subgraph with `hasIndexingErrors` is refused; the source never reports a
head beyond the subgraph's `_meta` block (a lagging subgraph is waited for, not trusted ahead).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from eth_utils import to_checksum_address
from gql import Client, GraphQLRequest
from gql.transport import Transport
from gql.transport.exceptions import TransportError, TransportQueryError, TransportServerError
from graphql import GraphQLSchema

from domain.events import Event
from indexer.decoding import Contracts, LogMeta, RealmNames, build_event, event_builder
from indexer.rpc import Chunk, Header, Inconsistent, NodeBehind, RpcUnavailable

#: graph-node's cap on `first`
PAGE_SIZE = 1000
#: blocks per chunk (each chunk is read page by page, pinned to one block)
GRAPH_SPAN_BLOCKS = 10_000
#: entity of infra/subgraph/schema.graphql -> (artifact, ABI event); fields are the ABI's names
GRAPH_ENTITIES: dict[str, tuple[str, str]] = {
    "RealmRegistered": ("RealmStaking", "RealmRegistered"),
    "RealmParamsSet": ("RealmStaking", "RealmParamsSet"),
    "ApiEnabled": ("RealmStaking", "ApiEnabled"),
    "KeeperChanged": ("RealmStaking", "KeeperChanged"),
    "Staked": ("RealmStaking", "Staked"),
    "UnstakeRequested": ("RealmStaking", "UnstakeRequested"),
    "StakeWithdrawn": ("RealmStaking", "Withdrawn"),
    "Slashed": ("RealmStaking", "Slashed"),
    "Deposited": ("Chequebook", "Deposited"),
    "ChequeCashed": ("Chequebook", "ChequeCashed"),
    "ChequeBounced": ("Chequebook", "ChequeBounced"),
    "ChequebookWithdrawn": ("Chequebook", "Withdrawn"),
    "ChequebookCreated": ("ChequebookFactory", "ChequebookCreated"),
    "Funded": ("EpochSettlement", "Funded"),
    "EpochPosted": ("EpochSettlement", "EpochPosted"),
    "BatchPushed": ("EpochSettlement", "BatchPushed"),
    "Claimed": ("EpochSettlement", "Claimed"),
    "Transfer": ("WMPToken", "Transfer"),
}
LOG_FIELDS = ("id", "contract", "blockNumber", "blockHash", "logIndex", "txHash")


class SubgraphError(RuntimeError):
    """The subgraph answered with something the indexer must not use (stops the indexer)."""


class SubgraphIndexingError(SubgraphError):
    """`_meta.hasIndexingErrors`: the subgraph's data is incomplete."""


def plural(entity: str) -> str:
    """graph-node's collection field of an entity type (`Staked` -> `stakeds`)."""
    return entity[0].lower() + entity[1:] + "s"


def entity_fields(entity: str) -> list[str]:
    """The entity's fields: the log's position, then the event's parameters (structs flat)."""
    layout, _ = event_builder(*GRAPH_ENTITIES[entity])
    fields = list(LOG_FIELDS)
    for p in layout.params:
        fields += [c.name for c in p.components] if p.type == "tuple" else [p.name]
    return fields


def page_query(entity: str, extra_where: str = "") -> str:
    """One page of one entity's logs in a block range, after an id, at a pinned block."""
    where = "blockNumber_gte: $from, blockNumber_lte: $to, id_gt: $after" + extra_where
    return (
        f"query Page($from: BigInt!, $to: BigInt!, $after: Bytes!, $pin: Bytes!"
        f"{', $mesh: [Bytes!]!' if extra_where else ''}) {{\n"
        f"  {plural(entity)}(first: {PAGE_SIZE}, orderBy: id, orderDirection: asc, "
        f"where: {{{where}}}, block: {{hash: $pin}}) {{ {' '.join(entity_fields(entity))} }}\n}}"
    )


META_QUERY = (
    "query Meta($gte: Int!) { _meta(block: {number_gte: $gte}) "
    "{ block { number hash } hasIndexingErrors } }"
)


def hashes_query(numbers: Iterable[int]) -> str:
    parts = [f"b{n}: _meta(block: {{number: {n}}}) {{ block {{ number hash }} }}" for n in numbers]
    return "query Hashes { " + " ".join(parts) + " }"


def all_queries() -> list[str]:
    """Every query document the source sends (hashes_query shown for one block)."""
    queries = [META_QUERY, hashes_query([1])]
    for entity in GRAPH_ENTITIES:
        queries.append(page_query(entity))
    queries += [
        page_query("Transfer", ", from_in: $mesh"),
        page_query("Transfer", ", to_in: $mesh"),
    ]
    return queries


class GraphSource:
    """A `Source` (see indexer/service.py) over a subgraph's GraphQL endpoint."""

    kind = "graph"

    def __init__(
        self,
        endpoint: str | Transport,
        contracts: Contracts,
        chain_id: int,
        timeout_s: int = 10,
        schema: GraphQLSchema | None = None,
    ) -> None:
        if isinstance(endpoint, str):
            from gql.transport.requests import RequestsHTTPTransport

            endpoint = RequestsHTTPTransport(endpoint, timeout=timeout_s, retries=0)
        self._transport = endpoint
        #: with `schema`, gql validates every query before sending it
        self._schema = schema
        self._local = threading.local()
        self.contracts = contracts
        self.chain_id = chain_id
        self.span_blocks = GRAPH_SPAN_BLOCKS
        self.seen_block = 0
        self._mesh = [c.lower() for c in contracts.mesh()]
        self._entities = {name: event_builder(*spec) for name, spec in GRAPH_ENTITIES.items()}

    def _client(self) -> Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = Client(transport=self._transport, schema=self._schema)
            self._local.client = client
        return client

    def _execute(self, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        request = GraphQLRequest(query, variable_values=dict(variables or {}))
        try:
            result: dict[str, Any] = self._client().execute(request)
        except TransportQueryError as exc:
            message = str(exc)
            if "has only indexed up to" in message or "not yet" in message.lower():
                raise NodeBehind(f"subgraph: {message}") from exc
            raise SubgraphError(f"subgraph refused a query: {message}") from exc
        except TransportServerError as exc:  # 429, 5xx
            raise RpcUnavailable(f"subgraph: HTTP {exc.code}: {exc}") from exc
        except (TransportError, OSError, TimeoutError) as exc:
            raise RpcUnavailable(f"subgraph: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:  # requests' own timeouts and connection errors
            if type(exc).__module__.startswith("requests"):
                raise RpcUnavailable(f"subgraph: {type(exc).__name__}: {exc}") from exc
            raise
        return result

    # -- chain position -------------------------------------------------------------------------
    def meta(self) -> tuple[int, str]:
        """The subgraph's indexed block (number, hash); refuses a subgraph with indexing errors
        and one that went back below a block it already showed."""
        meta = self._execute(META_QUERY, {"gte": self.seen_block})["_meta"]
        if meta["hasIndexingErrors"]:
            raise SubgraphIndexingError("the subgraph has indexing errors: its data is incomplete")
        number = int(meta["block"]["number"])
        self.seen_block = max(self.seen_block, number)
        return number, str(meta["block"]["hash"])

    def head(self) -> int:
        return self.meta()[0]

    def finalized(self) -> int | None:
        return None

    def block_hashes(self, numbers: Iterable[int]) -> dict[int, str | None]:
        numbers = [n for n in numbers if n >= 0]
        if not numbers:
            return {}
        try:
            data = self._execute(hashes_query(numbers))
        except SubgraphError:  # a block the subgraph does not know (ahead of it)
            return (
                {n: self.block_hashes([n]).get(n) for n in numbers}
                if len(numbers) > 1
                else {numbers[0]: None}
            )
        return {n: (data[f"b{n}"] or {}).get("block", {}).get("hash") for n in numbers}

    # -- fetching ----------------------------------------------------------------------------------
    def follow(self, chequebooks: Mapping[str, int]) -> None:
        """Nothing to do: every chunk reads the factory's chequebooks up to its own last block."""

    def complete(self, chunk: Chunk, chequebooks: frozenset[str]) -> Chunk:
        """A chunk of this source already covers every chequebook the factory created up to its
        last block at its pinned block; one it does not know was seen on another branch."""
        raise Inconsistent(
            f"chequebooks {sorted(chequebooks)} are not in the subgraph's chunk "
            f"{chunk.first}..{chunk.last}: another branch"
        )

    def fetch(self, first: int, last: int) -> Chunk:
        head, pin = self.meta()
        if last > head:
            raise NodeBehind(f"the subgraph has indexed up to {head}, not {last}")
        known = self.block_hashes([first - 1, last] if first > 0 else [last])
        parent = known.get(first - 1) or ("0x" + "00" * 32 if first == 0 else None)
        tip_hash = known.get(last)
        if parent is None or tip_hash is None:
            raise NodeBehind(f"the subgraph does not know block {first - 1} or {last}")
        # the factory's chequebooks up to this chunk's end (at the pinned block): their token
        # transfers count like those of the configured contracts
        followed = frozenset(
            str(row["chequebook"]).lower()
            for row in self._pages("ChequebookCreated", 0, last, pin)
            if str(row["contract"]).lower() == self.contracts.chequebook_factory.lower()
        )
        mesh = [*self._mesh, *sorted(followed)]
        items: list[tuple[str, dict[str, Any]]] = []
        for entity in GRAPH_ENTITIES:
            if entity == "Transfer":
                seen: set[str] = set()
                for where in (", from_in: $mesh", ", to_in: $mesh"):
                    for row in self._pages(entity, first, last, pin, where, mesh):
                        if row["id"] not in seen:
                            seen.add(row["id"])
                            items.append((entity, row))
            else:
                items += [(entity, row) for row in self._pages(entity, first, last, pin)]
        items.sort(key=lambda item: (int(item[1]["blockNumber"]), int(item[1]["logIndex"])))
        hashes = {int(row["blockNumber"]): str(row["blockHash"]) for _, row in items}
        hashes[last] = tip_hash
        header = Header(last, tip_hash, "", 0)
        return Chunk(first, last, parent, hashes, header, items, followed)

    def _pages(
        self,
        entity: str,
        first: int,
        last: int,
        pin: str,
        where: str = "",
        mesh: list[str] | None = None,
    ) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        after = "0x"
        query = page_query(entity, where)
        while True:
            variables: dict[str, Any] = {
                "from": str(first),
                "to": str(last),
                "after": after,
                "pin": pin,
            }
            if where:
                variables["mesh"] = mesh if mesh is not None else self._mesh
            page = self._execute(query, variables)[plural(entity)]
            rows += page
            if len(page) < PAGE_SIZE:
                return rows
            after = page[-1]["id"]

    def decode(self, chunk: Chunk, names: RealmNames) -> list[Event]:
        events = []
        for entity, row in chunk.items:
            layout, build = self._entities[entity]
            args: dict[str, Any] = {}
            for p in layout.params:
                if p.type == "tuple":
                    args[p.name] = {c.name: _value(c.type, row[c.name]) for c in p.components}
                else:
                    args[p.name] = _value(p.type, row[p.name])
            meta = LogMeta(
                chain_id=self.chain_id,
                contract=to_checksum_address(row["contract"]),
                block=int(row["blockNumber"]),
                block_hash=str(row["blockHash"]),
                log_index=int(row["logIndex"]),
                tx_hash=str(row["txHash"]),
            )
            events.append(build_event(layout, build, args, meta, names))
        return events


def _value(abi_type: str, value: Any) -> Any:
    """A subgraph value as the RPC decoder gives it (ints, EIP-55 addresses, lowercase hex)."""
    if abi_type == "address":
        return to_checksum_address(value)
    if abi_type.startswith(("uint", "int")):
        return int(value)
    if abi_type.startswith("bytes") and abi_type != "bytes":
        return str(value).lower()
    return value
