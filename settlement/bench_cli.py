"""`meshledger bench settlement`: the gas benchmark as a click command."""

from __future__ import annotations

import click


@click.command("settlement")
@click.option(
    "--json", "as_json", is_flag=True, help="Print only the JSON line (it is always printed last)."
)
def bench_settlement(as_json: bool) -> None:
    """Gas on anvil: pushBatch per payee (100/500/1000), claim, postEpoch, against Disperse-style
    and MerkleDistributor-style reference contracts on the same token."""
    from settlement.bench import run

    run(json_out=True)
