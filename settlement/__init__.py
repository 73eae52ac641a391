"""Layer-2 settlement: Solidity contracts and their compiled artifacts, payout Merkle trees,
deployment helpers, the transaction submitter and the settlement job."""
