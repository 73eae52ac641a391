// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";

/// @title Benchmark reference: Uniswap MerkleDistributor
/// @notice As published (Uniswap/merkle-distributor): one immutable root per contract, leaves
/// `keccak256(abi.encodePacked(index, account, amount))`, a claimed bitmap by index, sorted-pair
/// proofs. Ported to Solidity 0.8 and OpenZeppelin 5 unchanged in behaviour.
contract MerkleDistributor {
    /// @notice The distributed token.
    address public immutable token;
    /// @notice The root of the distribution tree.
    bytes32 public immutable merkleRoot;
    // Packed array of booleans, one bit per index.
    mapping(uint256 => uint256) private claimedBitMap;

    /// @notice Emitted when `amount` was sent to `account` for leaf `index`.
    event Claimed(uint256 index, address account, uint256 amount);

    /// @param token_ The distributed token (funded by plain transfer).
    /// @param merkleRoot_ The root of the distribution tree.
    constructor(address token_, bytes32 merkleRoot_) {
        token = token_;
        merkleRoot = merkleRoot_;
    }

    /// @notice Whether leaf `index` was claimed.
    function isClaimed(uint256 index) public view returns (bool) {
        uint256 claimedWordIndex = index / 256;
        uint256 claimedBitIndex = index % 256;
        uint256 claimedWord = claimedBitMap[claimedWordIndex];
        uint256 mask = (1 << claimedBitIndex);
        return claimedWord & mask == mask;
    }

    function _setClaimed(uint256 index) private {
        uint256 claimedWordIndex = index / 256;
        uint256 claimedBitIndex = index % 256;
        claimedBitMap[claimedWordIndex] = claimedBitMap[claimedWordIndex] | (1 << claimedBitIndex);
    }

    /// @notice Sends `amount` to `account` if leaf (index, account, amount) is in the tree and unclaimed.
    /// @param index The leaf's index.
    /// @param account The payee.
    /// @param amount The leaf's amount.
    /// @param merkleProof The leaf's proof (sorted pairs).
    function claim(uint256 index, address account, uint256 amount, bytes32[] calldata merkleProof) external {
        require(!isClaimed(index), "MerkleDistributor: Drop already claimed.");
        bytes32 node = keccak256(abi.encodePacked(index, account, amount));
        require(MerkleProof.verify(merkleProof, merkleRoot, node), "MerkleDistributor: Invalid proof.");
        _setClaimed(index);
        require(IERC20(token).transfer(account, amount), "MerkleDistributor: Transfer failed.");
        emit Claimed(index, account, amount);
    }
}
