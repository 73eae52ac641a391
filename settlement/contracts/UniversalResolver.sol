// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @notice What the resolver needs of the ENS registry.
interface IENSResolvers {
    function resolver(bytes32 node) external view returns (address);
}

/// @title A minimal universal resolver for a local ENS
/// @notice web3.py's ENS module resolves every name (forward and reverse) through an ENSIP-10
/// universal resolver: `resolve(dnsEncodedName, calldata)` finds the name's resolver in the
/// registry and calls it. ENS's own universal resolver is not in the npm packages that install
/// here, so the local ENS of the dev chain gets this one: exact names only (no wildcard
/// resolution from a parent), the resolver called with the given calldata as is.
contract UniversalResolver {
    /// @notice The ENS registry whose resolvers are used.
    IENSResolvers public immutable registry;

    error ResolverNotFound(bytes name);
    error ResolverError(bytes returnData);
    error BadName(bytes name);

    constructor(IENSResolvers registry_) {
        registry = registry_;
    }

    /// @notice The resolver of a DNS-encoded name, its namehash, and the offset of its label.
    function findResolver(bytes calldata name) public view returns (address, bytes32, uint256) {
        bytes32 node = _namehash(name, 0);
        return (registry.resolver(node), node, 0);
    }

    /// @notice Call the resolver of `name` with `data` (whose first argument is the namehash).
    function resolve(bytes calldata name, bytes calldata data) external view returns (bytes memory, address) {
        (address resolver,,) = findResolver(name);
        if (resolver == address(0)) revert ResolverNotFound(name);
        (bool ok, bytes memory result) = resolver.staticcall(data);
        if (!ok) revert ResolverError(result);
        return (result, resolver);
    }

    /// @dev EIP-137 namehash of a DNS-encoded name (length-prefixed labels, then a zero byte).
    function _namehash(bytes calldata name, uint256 offset) private pure returns (bytes32) {
        if (offset >= name.length) revert BadName(name);
        uint256 length = uint8(name[offset]);
        if (length == 0) return bytes32(0);
        uint256 next = offset + 1 + length;
        if (next > name.length) revert BadName(name);
        bytes32 parent = _namehash(name, next);
        return keccak256(abi.encodePacked(parent, keccak256(name[offset + 1:next])));
    }
}
