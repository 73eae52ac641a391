"""Committed contract artifacts are exactly what the sources compile to (solc-js, offline)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from infra import build_contracts
from settlement.contracts import load_artifact


@pytest.fixture(scope="module")
def built() -> dict[str, str]:
    return build_contracts.build_artifacts()


def test_committed_artifacts_match_a_fresh_compile(built: dict[str, str]) -> None:
    assert build_contracts.stale_artifacts(built) == []
    assert {"WMPToken.json", "RealmStaking.json", "Chequebook.json", "EpochSettlement.json"} <= set(
        built
    )
    artifact = load_artifact("EpochSettlement")
    assert artifact["bytecode"].startswith("0x60") and len(artifact["deployedBytecode"]) > 1000
    assert artifact["compiler"]["solc"] == build_contracts.SOLC_VERSION


def test_check_reports_an_edited_or_missing_artifact(
    built: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "artifacts"
    shutil.copytree(build_contracts.ARTIFACTS_DIR, copy)
    monkeypatch.setattr(build_contracts, "ARTIFACTS_DIR", copy)
    assert build_contracts.stale_artifacts(built) == []
    (copy / "Chequebook.json").write_text(
        (copy / "Chequebook.json").read_text().replace("0x60", "0x61", 1)
    )
    (copy / "RealmStaking.json").unlink()
    (copy / "Leftover.json").write_text("{}")
    assert build_contracts.stale_artifacts(built) == [
        "Chequebook.json",
        "Leftover.json",
        "RealmStaking.json",
    ]


def test_a_source_edit_makes_the_artifacts_stale(
    built: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sources = build_contracts.contract_sources()
    edited = dict(sources)
    name = "settlement/contracts/WMPToken.sol"
    edited[name] = sources[name].replace('"WMP"', '"WMP2"')
    monkeypatch.setattr(build_contracts, "contract_sources", lambda: edited)
    rebuilt = build_contracts.build_artifacts()
    assert "WMPToken.json" in build_contracts.stale_artifacts(rebuilt)
    ens = {f"{c}.json" for c in build_contracts.ENS_CONTRACTS}
    assert all(
        '"sourceHash"' in text and text != built[n] for n, text in rebuilt.items() if n not in ens
    )  # the hash covers every source, so every artifact of the project's changes
    assert all(rebuilt[n] == built[n] for n in ens)  # ENS's, compiled apart, do not
