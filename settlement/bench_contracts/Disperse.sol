// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

/// @title Benchmark reference: Disperse (disperse.app) batch ERC-20 transfer
/// @notice `disperseToken` as published: pull the sum from the caller into the contract, then
/// `transfer` each value to its recipient. Ported to Solidity 0.8 unchanged in behaviour.
contract Disperse {
    /// @notice Sends `values[i]` of `token` from the caller to `recipients[i]` for every i.
    /// @param token The ERC-20 to disperse; the caller approved the sum to this contract.
    /// @param recipients The payees.
    /// @param values The amounts, one per payee.
    function disperseToken(IERC20 token, address[] calldata recipients, uint256[] calldata values) external {
        uint256 total = 0;
        for (uint256 i = 0; i < recipients.length; i++) {
            total += values[i];
        }
        require(token.transferFrom(msg.sender, address(this), total));
        for (uint256 i = 0; i < recipients.length; i++) {
            require(token.transfer(recipients[i], values[i]));
        }
    }
}
