"""meshledger's WAMP router: realms, broker, dealer, authentication, metering and SWAP."""
