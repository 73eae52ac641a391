"""The Grafana dashboard and the Prometheus alert rules in infra/grafana name only metrics that
the services expose (infra/metrics.py and the projector's histogram), and load as JSON/YAML."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "infra" / "grafana"
#: sample suffixes Prometheus adds to a family's name
SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def exposed_families() -> set[str]:
    source = (ROOT / "infra" / "metrics.py").read_text() + (
        ROOT / "ledger" / "service.py"
    ).read_text()
    names = set(re.findall(r'"(meshledger_[a-z_]+)"', source))
    prefixes = {n for n in names if n.endswith("_emitter")} | {"meshledger_emitter"}
    emitter = re.findall(r'f"\{prefix\}(_[a-z_]+)"', source)
    assert emitter, "emitter metrics not found in infra/metrics.py"
    return names | {p + s for p in prefixes for s in emitter}


def referenced(text: str) -> tuple[set[str], set[str]]:
    """Metric names in PromQL text, and the tails of `__name__=~"meshledger_.*TAIL"` patterns."""
    tails = set(re.findall(r"meshledger_\.\*([a-z_]+)", text))
    names = {n for n in re.findall(r"meshledger_[a-z_]+", text) if not n.endswith("_")}
    return names, tails


def family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def test_alert_rules_and_dashboard_use_exposed_metrics() -> None:
    exposed = exposed_families()
    rules = yaml.safe_load((GRAFANA / "alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert len(exprs) >= 10 and all(r.get("alert") for g in rules["groups"] for r in g["rules"])
    dashboard = json.loads((GRAFANA / "meshledger.json").read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    for expr in exprs:
        names, tails = referenced(expr)
        # `up` is Prometheus' own (the scrape failed); every other rule reads our metrics
        assert names or tails or expr.startswith("up{"), f"no meshledger metric in {expr!r}"
        unknown = {n for n in names if family(n) not in exposed}
        assert not unknown, f"{expr!r} names metrics no service exposes: {unknown}"
        for tail in tails:
            assert any(n.endswith(tail) for n in exposed), f"{expr!r}: nothing ends in {tail}"
