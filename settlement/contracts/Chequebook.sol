// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/// @title SWAP chequebook: cumulative ERC-20 cheques of one issuer
/// @notice The issuer signs EIP-712 cheques `Cheque(chequebook, beneficiary, cumulativePayout)`
/// under the domain ("MeshChequebook", "1", chainId, this contract), so a cheque is only good on
/// this chain and against this chequebook. Cashing pays `cumulativePayout - paidOut[beneficiary]`,
/// capped by the balance; a partial payment is recorded as bounced and the rest stays cashable
/// with the same cheque once the chequebook is refilled. Anyone may submit a cheque; the money
/// always goes to its beneficiary.
contract Chequebook is EIP712 {
    using SafeERC20 for IERC20;

    /// @notice A signed cheque as submitted for cashing.
    struct SignedCheque {
        address beneficiary;
        uint256 cumulativePayout;
        bytes signature;
    }

    bytes32 public constant CHEQUE_TYPEHASH =
        keccak256("Cheque(address chequebook,address beneficiary,uint256 cumulativePayout)");

    // ---- storage ----
    /// @notice The token cheques are paid in.
    IERC20 public immutable token;
    /// @notice The key that signs cheques and may withdraw.
    address public immutable issuer;
    /// @notice Base units paid so far to each beneficiary (cheques are cumulative).
    mapping(address beneficiary => uint256 amount) public paidOut;
    /// @notice Base units paid so far to all beneficiaries.
    uint256 public totalPaidOut;

    // ---- events ----
    event Deposited(address indexed from, uint256 amount);
    event ChequeCashed(
        address indexed beneficiary, address indexed caller, uint256 cumulativePayout, uint256 paid
    );
    /// @notice Emitted with `ChequeCashed` when the balance covered only `paid` of `due`.
    event ChequeBounced(address indexed beneficiary, uint256 cumulativePayout, uint256 due, uint256 paid);
    event Withdrawn(address indexed to, uint256 amount);

    // ---- errors ----
    error InvalidChequeSignature(address signer, address issuer);
    error NothingToCash(address beneficiary, uint256 cumulativePayout, uint256 paidOut);
    error NotIssuer(address caller, address issuer);
    error InsufficientBalance(uint256 requested, uint256 balance);
    error ZeroAmount();

    /// @param chequeToken The token cheques are paid in.
    /// @param chequeIssuer The key that signs cheques and may withdraw.
    constructor(IERC20 chequeToken, address chequeIssuer) EIP712("MeshChequebook", "1") {
        token = chequeToken;
        issuer = chequeIssuer;
    }

    /// @notice Pulls `amount` from the caller into the chequebook.
    /// @param amount Base units, approved to this contract beforehand.
    function deposit(uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        emit Deposited(msg.sender, amount);
        token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Cashes one cheque: pays what it adds over `paidOut[beneficiary]`, capped by the balance.
    /// @param beneficiary The cheque's beneficiary, who receives the payment.
    /// @param cumulativePayout The cheque's cumulative amount.
    /// @param signature The issuer's 65-byte EIP-712 signature.
    /// @return paid Base units paid now (less than due when the cheque bounced).
    function cashCheque(address beneficiary, uint256 cumulativePayout, bytes calldata signature)
        external
        returns (uint256 paid)
    {
        return _cash(beneficiary, cumulativePayout, signature);
    }

    /// @notice Cashes several cheques in one transaction, in order; reverts as a whole if any
    /// cheque is invalid or adds nothing.
    /// @param cheques The cheques, each with its beneficiary, cumulative amount and signature.
    /// @return paidTotal Base units paid over all cheques.
    function cashChequeBatch(SignedCheque[] calldata cheques) external returns (uint256 paidTotal) {
        for (uint256 i; i < cheques.length; ++i) {
            paidTotal += _cash(cheques[i].beneficiary, cheques[i].cumulativePayout, cheques[i].signature);
        }
    }

    /// @notice Sends `amount` of the balance to the issuer; only the issuer. Outstanding cheques
    /// may bounce afterwards, which is the issuer's risk to manage.
    /// @param amount Base units to withdraw.
    function withdraw(uint256 amount) external {
        if (msg.sender != issuer) revert NotIssuer(msg.sender, issuer);
        uint256 balance = token.balanceOf(address(this));
        if (amount > balance) revert InsufficientBalance(amount, balance);
        emit Withdrawn(msg.sender, amount);
        token.safeTransfer(msg.sender, amount);
    }

    /// @notice The EIP-712 digest the issuer signs for a cheque.
    /// @param beneficiary The cheque's beneficiary.
    /// @param cumulativePayout The cheque's cumulative amount.
    function chequeDigest(address beneficiary, uint256 cumulativePayout) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(CHEQUE_TYPEHASH, address(this), beneficiary, cumulativePayout)));
    }

    /// @notice The EIP-712 domain separator (chain id and this address included).
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    function _cash(address beneficiary, uint256 cumulativePayout, bytes calldata signature)
        private
        returns (uint256 paid)
    {
        address signer = ECDSA.recover(chequeDigest(beneficiary, cumulativePayout), signature);
        if (signer != issuer) revert InvalidChequeSignature(signer, issuer);
        uint256 already = paidOut[beneficiary];
        if (cumulativePayout <= already) revert NothingToCash(beneficiary, cumulativePayout, already);
        uint256 due = cumulativePayout - already;
        uint256 balance = token.balanceOf(address(this));
        paid = due < balance ? due : balance;
        paidOut[beneficiary] = already + paid;
        totalPaidOut += paid;
        emit ChequeCashed(beneficiary, msg.sender, cumulativePayout, paid);
        if (paid < due) emit ChequeBounced(beneficiary, cumulativePayout, due, paid);
        if (paid > 0) token.safeTransfer(beneficiary, paid);
    }
}
