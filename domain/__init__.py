"""Pure domain of meshledger: event types, the signed record envelope, realm economics and
SWAP rules. No I/O: everything here is driven by unit tests without a broker or a chain."""
