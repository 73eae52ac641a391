// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {RealmStaking} from "../contracts/RealmStaking.sol";

/// @title Many stakes in one transaction, for the indexer benchmark
/// @notice Holds WMP and stakes it `count` times per call, so a short chain carries many
/// RealmStaking `Staked` and token `Transfer` events (two logs per stake).
contract StakeBurst {
    RealmStaking public immutable staking;

    /// @param realmStaking The staking contract; this contract approves it for all its tokens.
    /// @param token The staked token.
    constructor(RealmStaking realmStaking, IERC20 token) {
        staking = realmStaking;
        token.approve(address(realmStaking), type(uint256).max);
    }

    /// @notice Stakes `amount` `count` times in `realm` as `role` on `target`.
    /// @param realm A registered realm.
    /// @param role The role of every stake.
    /// @param target The target of every stake.
    /// @param amount Base units per stake (this contract must hold `count * amount`).
    /// @param count How many stakes.
    function burst(bytes32 realm, RealmStaking.Role role, address target, uint256 amount, uint256 count) external {
        for (uint256 i; i < count; ++i) {
            staking.stake(realm, role, target, amount);
        }
    }
}
