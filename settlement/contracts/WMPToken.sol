// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {ERC165} from "@openzeppelin/contracts/utils/introspection/ERC165.sol";
import {IBatchTransfer} from "./IBatchTransfer.sol";

/// @title WMP token for development and tests
/// @notice A plain OpenZeppelin ERC-20, mintable by its owner, plus `IBatchTransfer` so settlement
/// pushes pay many payees with one debit. Production deployments point at the real WMP token.
contract WMPToken is ERC20, Ownable, ERC165, IBatchTransfer {
    // Storage: OpenZeppelin's ERC20 is the first base, so its `_balances` mapping is slot 0
    // (checked by the build against the compiler's storage layout); `transferBatch` writes it
    // directly because the mapping is private in ERC20.
    uint256 private constant BALANCES_SLOT = 0;
    // keccak256("Transfer(address,address,uint256)")
    bytes32 private constant TRANSFER_TOPIC =
        0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef;

    /// @param initialOwner The account allowed to mint.
    constructor(address initialOwner) ERC20("WAMP Mesh Token", "WMP") Ownable(initialOwner) {}

    /// @notice Creates `amount` base units for `to`.
    /// @param to The receiver of the new tokens.
    /// @param amount Base units to create.
    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }

    /// @inheritdoc IBatchTransfer
    /// @dev Reverts with `ERC20InvalidReceiver(address(0))` on a zero recipient and with
    /// `ERC20InsufficientBalance` when the caller holds less than the sum. A credit cannot overflow:
    /// every balance is bounded by the total supply, which fits in uint256.
    function transferBatch(bytes32[] calldata packed) external returns (uint256 total) {
        uint256 n = packed.length;
        for (uint256 i; i < n; ++i) {
            total += uint96(uint256(packed[i]));
        }
        address sender = _msgSender();
        uint256 senderBalance = balanceOf(sender);
        if (senderBalance < total) revert ERC20InsufficientBalance(sender, senderBalance, total);
        // Debit first, then credit each recipient: a recipient equal to the sender ends up right.
        _setBalance(sender, senderBalance - total);
        bytes32 topic = TRANSFER_TOPIC;
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            let offset := packed.offset
            let end := add(offset, shl(5, n))
            for {} lt(offset, end) { offset := add(offset, 0x20) } {
                let entry := calldataload(offset)
                let to := shr(96, entry)
                let amount := and(entry, 0xffffffffffffffffffffffff)
                if iszero(to) {
                    mstore(ptr, shl(224, 0xec442f05)) // ERC20InvalidReceiver(address)
                    mstore(add(ptr, 4), 0)
                    revert(ptr, 0x24)
                }
                mstore(0x00, to)
                mstore(0x20, BALANCES_SLOT)
                let slot := keccak256(0x00, 0x40)
                sstore(slot, add(sload(slot), amount))
                mstore(0x00, amount)
                log3(0x00, 0x20, topic, sender, to)
            }
        }
    }

    /// @inheritdoc ERC165
    function supportsInterface(bytes4 interfaceId) public view override returns (bool) {
        return interfaceId == type(IBatchTransfer).interfaceId || super.supportsInterface(interfaceId);
    }

    function _setBalance(address account, uint256 value) private {
        assembly ("memory-safe") {
            mstore(0x00, account)
            mstore(0x20, BALANCES_SLOT)
            sstore(keccak256(0x00, 0x40), value)
        }
    }
}
