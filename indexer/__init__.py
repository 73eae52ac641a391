"""The indexer: chain state into the event log. RPC log sync (default) or a The Graph subgraph
(gql), Chainlink feeds, reorg window and checkpoints. Imports `domain` and the ledger's emitter."""
