"""ENS names for the mesh (WEP008's special-purpose names): a local ENS on the dev chain (ENS's own
registry, `.eth` first-come registrar, reverse registrar and public resolver, compiled from npm),
naming an address (`<name>.eth` -> address, `<address>.addr.reverse` -> name), and `Names`, the
lookups through web3.py's ENS module that the CLI, the query output and the clients use.

A reverse record counts only when its name resolves forward to the same address (web3's
`ENS.name` checks it): anybody can claim any name in their own reverse record.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_hash.auto import keccak
from web3 import Web3

from settlement.contracts import at, deploy, send_signed, transact

ZERO_NODE = b"\x00" * 32
#: lookups `Names` remembers (name or address -> answer), oldest forgotten first
NAMES_CACHE_ENTRIES = 4096
ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")


def namehash(name: str) -> bytes:
    """EIP-137 namehash of a (normalized, lower-case) name."""
    node = ZERO_NODE
    if name:
        for label in reversed(name.split(".")):
            node = keccak(node + keccak(label.encode()))
    return node


@dataclass(frozen=True)
class EnsDeployment:
    """Where a local ENS lives: the registry (what clients need) and its helpers."""

    registry: str
    resolver: str
    eth_registrar: str
    reverse_registrar: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def at(cls, w3: Web3, registry: str) -> EnsDeployment:
        """The rest, read from the registry: `.eth`'s and `addr.reverse`'s owners (the
        registrars) and the reverse registrar's default resolver."""
        ens = at(w3, "ENSRegistry", registry)
        eth = ens.functions.owner(namehash("eth")).call()
        reverse = ens.functions.owner(namehash("addr.reverse")).call()
        if int(eth, 16) == 0 or int(reverse, 16) == 0:
            raise ValueError(f"{registry}: not an ENS registry with .eth and addr.reverse")
        resolver = at(w3, "ReverseRegistrar", reverse).functions.defaultResolver().call()
        return cls(Web3.to_checksum_address(registry), str(resolver), str(eth), str(reverse))


def deploy_ens(w3: Web3, sender: str) -> EnsDeployment:
    """ENS on a dev chain from an unlocked account `sender` (the root's owner): the registry,
    a public resolver, `.eth` owned by a first-come registrar, `addr.reverse` owned by the
    reverse registrar (the public resolver as its default resolver)."""
    registry = deploy(w3, "ENSRegistry", sender=sender)
    resolver = deploy(w3, "PublicResolver", registry.address, sender=sender)
    eth = deploy(w3, "FIFSRegistrar", registry.address, namehash("eth"), sender=sender)
    transact(w3, registry.functions.setSubnodeOwner(ZERO_NODE, keccak(b"eth"), eth.address), sender)
    transact(w3, registry.functions.setSubnodeOwner(ZERO_NODE, keccak(b"reverse"), sender), sender)
    reverse = deploy(w3, "ReverseRegistrar", registry.address, resolver.address, sender=sender)
    claim = registry.functions.setSubnodeOwner(
        namehash("reverse"), keccak(b"addr"), reverse.address
    )
    transact(w3, claim, sender)
    install_universal_resolver(w3, str(registry.address), sender)
    return EnsDeployment(
        str(registry.address), str(resolver.address), str(eth.address), str(reverse.address)
    )


def install_universal_resolver(w3: Web3, registry: str, sender: str) -> None:
    """web3.py's ENS module resolves through the universal resolver at ENS's canonical address
    (`ens.constants.UNIVERSAL_RESOLVER_ADDR`): on the dev chain (anvil) ours is deployed for
    `registry` and its code placed there (`anvil_setCode`; the registry is an immutable, part of
    the code), so the stock module resolves names of this ENS unchanged."""
    from ens.constants import UNIVERSAL_RESOLVER_ADDR

    universal = deploy(w3, "UniversalResolver", registry, sender=sender)
    code = w3.eth.get_code(universal.address)
    reply = w3.provider.make_request(
        "anvil_setCode",  # type: ignore[arg-type]
        [UNIVERSAL_RESOLVER_ADDR, "0x" + bytes(code).hex()],
    )
    if "error" in reply:
        raise RuntimeError(f"anvil_setCode at the universal resolver's address: {reply['error']}")


def eth_label(name: str) -> str:
    """The label of a `<label>.eth` name; ValueError for anything else."""
    if not name.endswith(".eth") or name.count(".") != 1 or len(name) < 5:
        raise ValueError(f"{name!r}: a name here is <label>.eth (one label, then .eth)")
    label = name[: -len(".eth")]
    if label != label.lower() or not re.fullmatch(r"[a-z0-9-]{1,63}", label):
        raise ValueError(f"{name!r}: a label is 1-63 of a-z, 0-9 and '-'")
    return label


def register_name(
    w3: Web3, ens: EnsDeployment, name: str, key: bytes, address: str | None = None
) -> str:
    """`name` (`<label>.eth`, first come) to `key`'s account, resolving to `address` (default:
    that account), and the account's reverse record set to `name` when it is the address.
    The transactions are signed with `key`; returns the address the name resolves to."""
    label = eth_label(name)
    owner = Account.from_key(key).address
    target = Web3.to_checksum_address(address or owner)
    node = namehash(name)
    registrar = at(w3, "FIFSRegistrar", ens.eth_registrar)
    registry = at(w3, "ENSRegistry", ens.registry)
    resolver = at(w3, "PublicResolver", ens.resolver)
    send_signed(w3, registrar.functions.register(keccak(label.encode()), owner), key)
    send_signed(w3, registry.functions.setResolver(node, ens.resolver), key)
    set_addr = resolver.get_function_by_signature("setAddr(bytes32,address)")
    send_signed(w3, set_addr(node, target), key)
    if target == owner:
        set_reverse(w3, ens, name, key)
    return target


def set_reverse(w3: Web3, ens: EnsDeployment, name: str, key: bytes) -> None:
    """`key`'s account names itself `name` in its reverse record (`<address>.addr.reverse`)."""
    reverse = at(w3, "ReverseRegistrar", ens.reverse_registrar)
    send_signed(w3, reverse.functions.setName(name), key)


class Names:
    """Forward and reverse lookups through web3.py's ENS module, remembered (at most
    `NAMES_CACHE_ENTRIES`; thread-safe). A failed lookup (no name, no record, the node
    unreachable) answers None, so output that shows names never fails for want of one."""

    def __init__(self, rpc_url: str, registry: str, timeout_s: float = 5.0) -> None:
        from ens import ENS

        self.w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout_s}))
        self.ens = ENS.from_web3(self.w3, addr=Web3.to_checksum_address(registry))
        self._cache: OrderedDict[str, str | None] = OrderedDict()
        self._lock = threading.Lock()

    def _remembered(self, key: str, lookup: Any) -> str | None:
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        try:
            found = lookup()
        except Exception:  # noqa: BLE001 - no name is the answer to any failed lookup
            found = None
        with self._lock:
            self._cache[key] = None if found is None else str(found)
            if len(self._cache) > NAMES_CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return None if found is None else str(found)

    def address(self, name: str) -> str | None:
        """The address `name` resolves to (checksummed), None without one."""
        return self._remembered(f"name:{name}", lambda: self.ens.address(name))

    def name(self, address: str) -> str | None:
        """The name `address` gives itself in its reverse record, if it resolves back to it."""
        if not ADDRESS.match(address):
            return None
        return self._remembered(f"addr:{address.lower()}", lambda: self.ens.name(address))

    def resolve(self, name_or_address: str) -> str:
        """An address as given, or the one a name resolves to; ValueError when it resolves
        to none."""
        if ADDRESS.match(name_or_address):
            return Web3.to_checksum_address(name_or_address)
        found = self.address(name_or_address)
        if found is None:
            raise ValueError(f"{name_or_address!r} resolves to no address")
        return found


def ensure_dev_names(rpc_url: str, contracts_file: Path, keys: dict[str, Path]) -> str:
    """`meshledger up` on its own dev chain: ENS (the one `contracts_file` records as
    `ens_registry` while the chain still has it, else deployed now from anvil's first account and
    recorded there) and `<label>.eth` for each label -> key file, registered to that key's
    account with its reverse record (a name that already resolves to its account is left as it
    is; a label that is no valid `.eth` label is skipped). Returns the registry's address."""
    from ledger.keys import read_key_file

    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
    saved = json.loads(contracts_file.read_text())
    registry = saved.get("ens_registry")
    if registry and len(w3.eth.get_code(Web3.to_checksum_address(registry))) > 0:
        where = EnsDeployment.at(w3, registry)
    else:
        where = deploy_ens(w3, w3.eth.accounts[0])
        contracts_file.write_text(json.dumps({**saved, "ens_registry": where.registry}, indent=2))
    names = Names(rpc_url, where.registry)
    for label, path in keys.items():
        name = f"{label}.eth"
        try:
            eth_label(name)
        except ValueError:
            continue
        key = read_key_file(path)
        if names.address(name) != Account.from_key(key).address:
            register_name(w3, where, name, key)
    return where.registry
