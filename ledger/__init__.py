"""The ledger: Kafka emitter and projector, DuckDB projections, epoch closer, audit, query API
and the `meshledger` CLI. Imports `domain` only."""
