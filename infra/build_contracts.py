"""Offline Solidity build: solc-js from node_modules compiles settlement's contracts to artifacts.

`python -m infra.build_contracts` writes settlement/artifacts/<Name>.json (ABI, bytecode,
deployed bytecode, source hash); `--check` exits 1 when the committed artifacts are stale.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = REPO_ROOT / "node_modules"
SOURCE_DIRS = ("settlement/contracts", "settlement/bench_contracts")
ARTIFACTS_DIR = REPO_ROOT / "settlement" / "artifacts"
SOLC_VERSION = "0.8.37"
COMPILE_TIMEOUT_S = 300

# cancun: what Arbitrum and other L2s run; the optimizer is tuned for calls, not deployment.
SETTINGS: dict[str, Any] = {
    "evmVersion": "cancun",
    "optimizer": {"enabled": True, "runs": 10_000},
    "outputSelection": {
        "*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object", "storageLayout"]}
    },
}

# solc-js with an import callback that reads `@openzeppelin/...` (and any package) from
# node_modules; standard JSON in on stdin, standard JSON out on stdout.
_NODE_COMPILER = r"""
const fs = require('fs');
const path = require('path');
const solc = require(path.join(process.argv[1], process.argv[2] || 'solc'));
const input = fs.readFileSync(0, 'utf8');
function findImports(p) {
  const file = path.join(process.argv[1], p);
  if (!file.startsWith(process.argv[1] + path.sep) || !fs.existsSync(file)) return { error: 'not found: ' + p };
  return { contents: fs.readFileSync(file, 'utf8') };
}
process.stdout.write(solc.compile(input, { import: findImports }));
"""


# ENS (issue 12): the registry, the `.eth` first-come registrar, the reverse registrar and the
# public resolver from npm (@ensdomains/ens, @ensdomains/resolver), compiled with the solc 0.7
# they are written for (`solc-0.7` in package.json), for a local ENS on the dev chain.
ENS_SOLC_PACKAGE = "solc-0.7"
ENS_SOLC_VERSION = "0.7.6"
ENS_SOURCES = (
    "@ensdomains/ens/contracts/ENSRegistry.sol",
    "@ensdomains/ens/contracts/FIFSRegistrar.sol",
    "@ensdomains/ens/contracts/ReverseRegistrar.sol",
    "@ensdomains/resolver/contracts/PublicResolver.sol",
)
ENS_CONTRACTS = ("ENSRegistry", "FIFSRegistrar", "ReverseRegistrar", "PublicResolver")
ENS_SETTINGS: dict[str, Any] = {
    "evmVersion": "istanbul",
    "optimizer": {"enabled": True, "runs": 200},
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
}


class BuildError(RuntimeError):
    """The compiler reported errors, or its output broke an assumption of the contracts."""


def contract_sources() -> dict[str, str]:
    """Project Solidity sources by repo-relative path, in a stable order."""
    sources: dict[str, str] = {}
    for folder in SOURCE_DIRS:
        for path in sorted((REPO_ROOT / folder).glob("*.sol")):
            sources[path.relative_to(REPO_ROOT).as_posix()] = path.read_text()
    return sources


def compile_sources(
    sources: dict[str, str],
    package: str = "solc",
    version: str = SOLC_VERSION,
    settings: dict[str, Any] = SETTINGS,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Compile with solc-js (`package` in node_modules, which must be `version`); returns the
    standard-JSON output and every source it read (project files plus resolved imports), for
    the artifact hash."""
    solc_pkg = json.loads((NODE_MODULES / package / "package.json").read_text())
    if solc_pkg["version"] != version:
        raise BuildError(f"node_modules/{package} is {solc_pkg['version']}, expected {version}")
    standard_input = {
        "language": "Solidity",
        "sources": {name: {"content": text} for name, text in sources.items()},
        "settings": settings,
    }
    proc = subprocess.run(
        ["node", "-e", _NODE_COMPILER, str(NODE_MODULES), package],
        input=json.dumps(standard_input),
        capture_output=True,
        text=True,
        timeout=COMPILE_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        raise BuildError(f"solc-js failed: {proc.stderr.strip()}")
    output: dict[str, Any] = json.loads(proc.stdout)
    errors = [e for e in output.get("errors", []) if e["severity"] == "error"]
    if errors:
        raise BuildError("\n".join(e["formattedMessage"] for e in errors))
    used = dict(sources)
    for name in output["sources"]:
        if name not in used:
            used[name] = (NODE_MODULES / name).read_text()
    return output, used


def sources_hash(
    used_sources: dict[str, str], version: str = SOLC_VERSION, settings: dict[str, Any] = SETTINGS
) -> str:
    """sha256 over compiler version, settings and every source (path and content)."""
    digest = hashlib.sha256()
    digest.update(f"solc {version}\n".encode())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for name in sorted(used_sources):
        digest.update(f"\n{name}\n".encode())
        digest.update(used_sources[name].encode())
    return digest.hexdigest()


def _check_token_layout(output: dict[str, Any]) -> None:
    # WMPToken.transferBatch writes ERC20's private `_balances` at a fixed slot.
    layout = output["contracts"]["settlement/contracts/WMPToken.sol"]["WMPToken"]["storageLayout"]
    slots = {entry["label"]: entry["slot"] for entry in layout["storage"]}
    if slots.get("_balances") != "0":
        raise BuildError(f"WMPToken: ERC20 _balances moved to slot {slots.get('_balances')}")


def build_artifacts() -> dict[str, str]:
    """Compile everything; returns artifact file name -> file text (not written)."""
    sources = contract_sources()
    output, used = compile_sources(sources)
    _check_token_layout(output)
    source_hash = sources_hash(used)
    artifacts: dict[str, str] = {}
    for source_name in sources:
        for name, contract in sorted(output["contracts"].get(source_name, {}).items()):
            if not contract["evm"]["bytecode"]["object"]:
                continue  # interfaces and abstract contracts
            artifacts[f"{name}.json"] = _artifact(
                name, source_name, contract, SOLC_VERSION, SETTINGS, source_hash
            )
    artifacts.update(build_ens_artifacts())
    return artifacts


def _artifact(
    name: str,
    source_name: str,
    contract: dict[str, Any],
    version: str,
    settings: dict[str, Any],
    source_hash: str,
) -> str:
    """The artifact file's text of one compiled contract."""
    artifact = {
        "contractName": name,
        "sourceName": source_name,
        "compiler": {"solc": version, "settings": settings},
        "sourceHash": source_hash,
        "abi": contract["abi"],
        "bytecode": "0x" + contract["evm"]["bytecode"]["object"],
        "deployedBytecode": "0x" + contract["evm"]["deployedBytecode"]["object"],
    }
    return json.dumps(artifact, indent=1, sort_keys=True) + "\n"


def build_ens_artifacts() -> dict[str, str]:
    """ENS's contracts from npm, compiled with their solc (artifact file name -> text)."""
    sources = {name: (NODE_MODULES / name).read_text() for name in ENS_SOURCES}
    output, used = compile_sources(sources, ENS_SOLC_PACKAGE, ENS_SOLC_VERSION, ENS_SETTINGS)
    source_hash = sources_hash(used, ENS_SOLC_VERSION, ENS_SETTINGS)
    artifacts: dict[str, str] = {}
    for source_name in ENS_SOURCES:
        for name, contract in sorted(output["contracts"].get(source_name, {}).items()):
            if name in ENS_CONTRACTS:
                artifacts[f"{name}.json"] = _artifact(
                    name, source_name, contract, ENS_SOLC_VERSION, ENS_SETTINGS, source_hash
                )
    missing = set(ENS_CONTRACTS) - {n.removesuffix(".json") for n in artifacts}
    if missing:
        raise BuildError(f"ENS contracts not built: {sorted(missing)}")
    return artifacts


def stale_artifacts(built: dict[str, str]) -> list[str]:
    """Artifact files that differ from `built`, are missing, or should not exist."""
    committed = {path.name for path in ARTIFACTS_DIR.glob("*.json")}
    stale = [
        name
        for name, text in built.items()
        if not (ARTIFACTS_DIR / name).exists() or (ARTIFACTS_DIR / name).read_text() != text
    ]
    return sorted(stale + [name for name in committed - built.keys()])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if artifacts are stale")
    args = parser.parse_args(argv)
    try:
        built = build_artifacts()
    except BuildError as exc:
        print(f"build failed: {exc}", file=sys.stderr)
        return 2
    stale = stale_artifacts(built)
    if args.check:
        if stale:
            print(f"stale artifacts: {', '.join(stale)}; run python -m infra.build_contracts")
            return 1
        print(f"{len(built)} artifacts up to date")
        return 0
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    for name in stale:
        path = ARTIFACTS_DIR / name
        if name in built:
            path.write_text(built[name])
        else:
            path.unlink()
    print(f"wrote {len(stale)} of {len(built)} artifacts to {ARTIFACTS_DIR.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
