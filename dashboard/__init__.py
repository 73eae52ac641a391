"""The web dashboard: a page of realms, bandwidth, epochs, payouts, SWAP and the chain, read
only from the projections (`meshledger dashboard`, and /dashboard on the query endpoint)."""
