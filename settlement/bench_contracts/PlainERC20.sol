// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title Benchmark and test reference: a plain OpenZeppelin ERC-20 without `IBatchTransfer`
/// @notice Stands for a production token: `EpochSettlement` pays its pushes with one `transfer`
/// per entry. The whole supply goes to the deployer.
contract PlainERC20 is ERC20 {
    /// @param supply Base units minted to the deployer.
    constructor(uint256 supply) ERC20("Plain", "PLN") {
        _mint(msg.sender, supply);
    }
}
