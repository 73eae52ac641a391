// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {Chequebook} from "./Chequebook.sol";

/// @title Deploys SWAP chequebooks and announces each one
/// @notice Clients are many and each needs a chequebook of its own; an indexer cannot be
/// configured with every address. It follows this factory instead: every chequebook deployed
/// here is announced by `ChequebookCreated`, and its logs are indexed from that block on.
contract ChequebookFactory {
    // ---- storage ----
    /// @notice Whether a chequebook was deployed by this factory (its code is then known good).
    mapping(address chequebook => bool) public deployedHere;

    // ---- events ----
    /// @notice A chequebook paying in `token`, whose cheques `issuer` signs, was deployed.
    event ChequebookCreated(address indexed chequebook, address indexed issuer, address indexed token);

    // ---- errors ----
    error ZeroAddress();

    /// @notice Deploys a chequebook paying in `token` whose cheques `issuer` signs. Anyone may
    /// deploy one for anyone: a chequebook only pays what was deposited into it.
    /// @param token The ERC-20 token cheques are paid in.
    /// @param issuer The key that signs cheques and may withdraw.
    /// @return chequebook The new chequebook.
    function createChequebook(IERC20 token, address issuer) external returns (Chequebook chequebook) {
        if (address(token) == address(0) || issuer == address(0)) revert ZeroAddress();
        chequebook = new Chequebook(token, issuer);
        deployedHere[address(chequebook)] = true;
        emit ChequebookCreated(address(chequebook), issuer, address(token));
    }
}
