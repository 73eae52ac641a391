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
    /// `ERC20InsufficientBalance` when the caller holds less than the sum (the whole batch reverts,
    /// credits included). A credit cannot overflow: every balance is bounded by the total supply,
    /// and the sum of at most calldata-many 96-bit amounts fits in uint256.
    function transferBatch(bytes32[] calldata packed) external returns (uint256 total) {
        address sender = _msgSender();
        bytes32 topic = TRANSFER_TOPIC;
        // One pass: credit each recipient and emit its Transfer, then debit the sender once.
        assembly ("memory-safe") {
            mstore(0x20, BALANCES_SLOT)
            let offset := packed.offset
            for { let end := add(offset, shl(5, packed.length)) } lt(offset, end) { offset := add(offset, 0x20) } {
                let entry := calldataload(offset)
                let to := shr(96, entry)
                if iszero(to) {
                    mstore(0x00, shl(224, 0xec442f05)) // ERC20InvalidReceiver(address(0))
                    mstore(0x04, 0)
                    revert(0x00, 0x24)
                }
                let amount := and(entry, 0xffffffffffffffffffffffff)
                total := add(total, amount)
                mstore(0x00, to)
                let slot := keccak256(0x00, 0x40)
                sstore(slot, add(sload(slot), amount))
                mstore(0x00, amount)
                log3(0x00, 0x20, topic, sender, to)
            }
        }
        // Read after the credits, so an entry paying the sender itself is counted like a transfer.
        uint256 senderBalance = balanceOf(sender);
        if (senderBalance < total) revert ERC20InsufficientBalance(sender, senderBalance, total);
        _setBalance(sender, senderBalance - total);
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
