"""CLI commands of the marketplace (plugged into `meshledger` by entry points)."""

from __future__ import annotations

import json

import click


@click.command("bench-market")
@click.option("--json", "as_json", is_flag=True, help="last line: one JSON object")
@click.option("--calls", default=5_000, show_default=True, help="calls per measurement")
@click.option("--rounds", default=3, show_default=True, help="measurements per scenario")
def bench_market(as_json: bool, calls: int, rounds: int) -> None:
    """What the marketplace costs a router per call: a router without it, with it but no
    service in the log, and with every call a market call (assessed, a CallAssessed event each),
    alternating in one run (`--rounds` times, the median); router and clients in one process."""
    from market.bench import run_bench

    result = run_bench(calls, rounds)
    if not as_json:
        for key, value in result.items():
            click.echo(f"{key:28} {value}")
    click.echo(json.dumps(result))
