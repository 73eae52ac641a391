// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title Batch transfer of packed (address, uint96) entries
/// @notice An optional ERC-20 extension: the caller's balance is debited once with the sum, each
/// recipient is credited and gets its own standard `Transfer` event. `EpochSettlement` uses it when
/// the payout token announces it through ERC-165, and falls back to one `transfer` per entry.
/// @dev Entry layout: `bytes32(uint256(uint160(account)) << 96 | uint96(amount))`.
interface IBatchTransfer {
    /// @notice Moves `uint96(entry)` from the caller to `address(entry >> 96)` for every entry.
    /// @param packed The entries, address in the high 160 bits and amount in the low 96 bits.
    /// @return total The sum of the amounts, debited from the caller.
    function transferBatch(bytes32[] calldata packed) external returns (uint256 total);
}
