// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {IERC165} from "@openzeppelin/contracts/utils/introspection/IERC165.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Address} from "@openzeppelin/contracts/utils/Address.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {IBatchTransfer} from "./IBatchTransfer.sol";

/// @title Per-realm, per-epoch payouts on a layer 2: one Merkle root, push batches and claims
/// @notice Realms are funded with `fund`. For each closed epoch a poster (the settlement job's
/// key) posts one root and the epoch's total. The root is an OpenZeppelin StandardMerkleTree over
/// leaves `abi.encode(uint256 chainId, address settlement, bytes32 realm, uint256 epoch,
/// address account, uint256 amount)`, hashed `keccak256(bytes.concat(keccak256(leaf)))`,
/// of two kinds:
///  * claim leaf (`account != 0`): `amount` is the account's *cumulative claimable* payout in the
///    realm up to and including `epoch`; `claim` pays `amount - claimed[realm][account]`, so any
///    posted root can be used, a newer one pays the difference, and none pays twice;
///  * batch leaf (`account == 0`): `amount` is `uint256(batchDigest(batchIdx, packed))`, the
///    commitment to push batch `batchIdx` of the epoch; `pushBatch` pays its packed
///    (address, uint96 amount) entries once, tracked by a bitmap of batch indexes.
/// Push and claim never pay the same money because the tree builder assigns every unit of an
/// epoch's payouts to exactly one of the two: a pushed payout is not added to the account's
/// claimable cumulative. Pushed entries are authenticated by the root (anyone may push a committed
/// batch), their sum is capped by the epoch's posted total, and every payment of a realm - pushed
/// or claimed - is capped by what the realm allocated to posted epochs, which `postEpoch` caps by
/// what the realm was funded with. So a wrong root can at worst misdirect its own realm's funds.
/// Chain id and contract address in every leaf make a proof useless anywhere else.
contract EpochSettlement is Ownable {
    using SafeERC20 for IERC20;

    /// @notice Funding and spending of one realm, in token base units.
    struct Realm {
        uint256 funded; // everything ever funded
        uint128 allocated; // sum of the totals of posted epochs (<= funded)
        uint128 paid; // pushed + claimed so far (<= allocated)
    }

    /// @notice One posted epoch of one realm.
    struct Epoch {
        bytes32 root; // zero until posted; write-once
        uint112 total; // the epoch's payouts, pushed and claimable
        uint112 pushed; // paid by pushBatch for this epoch (<= total)
        uint32 firstBatches; // bit i set: batch i < 32 pushed (saves a fresh storage word per epoch)
    }

    uint256 private constant AMOUNT_MASK = (1 << 96) - 1;
    uint256 private constant IN_RECORD_BATCHES = 32;

    // ---- storage ----
    /// @notice The payout token.
    IERC20 public immutable token;
    /// @notice Whether the token implements `IBatchTransfer` (checked once, through ERC-165).
    bool public immutable tokenBatchTransfer;
    /// @notice Accounts allowed to post epoch roots (besides nobody: the owner adds them).
    mapping(address account => bool allowed) public isPoster;
    mapping(bytes32 realm => Realm) private _realms;
    mapping(bytes32 realm => mapping(uint256 epoch => Epoch)) private _epochs;
    /// @dev Batches from 32 on: bit `(batchIdx - 32) % 256` of word `(batchIdx - 32) / 256` is set
    /// once that batch was pushed (batches below 32 live in `Epoch.firstBatches`).
    mapping(bytes32 realm => mapping(uint256 epoch => mapping(uint256 word => uint256 bits))) private _laterBatches;
    /// @notice Cumulative amount claimed by `account` in `realm` (pushes are not counted here).
    mapping(bytes32 realm => mapping(address account => uint256 amount)) public claimed;

    // ---- events ----
    event PosterSet(address indexed account, bool allowed);
    event Funded(bytes32 indexed realm, address indexed from, uint256 amount);
    event EpochPosted(bytes32 indexed realm, uint256 indexed epoch, bytes32 root, uint256 total);
    event Claimed(bytes32 indexed realm, address indexed account, uint256 epoch, uint256 cumulative, uint256 amount);
    event BatchPushed(bytes32 indexed realm, uint256 indexed epoch, uint256 batchIdx, uint256 entries, uint256 amount);

    // ---- errors ----
    error NotPoster(address caller);
    error ZeroAmount();
    error ZeroRoot();
    error ZeroAccount();
    error EmptyBatch();
    error AmountTooLarge(uint256 amount);
    error InsufficientFunding(bytes32 realm, uint256 required, uint256 available);
    error RootMismatch(bytes32 realm, uint256 epoch, bytes32 posted, bytes32 offered);
    error TotalMismatch(bytes32 realm, uint256 epoch, uint256 posted, uint256 offered);
    error EpochNotPosted(bytes32 realm, uint256 epoch);
    error InvalidProof(bytes32 realm, uint256 epoch, bytes32 leaf);
    error NothingToClaim(bytes32 realm, address account, uint256 cumulative, uint256 alreadyClaimed);
    error PushExceedsTotal(bytes32 realm, uint256 epoch, uint256 pushed, uint256 total);
    error RealmOverspent(bytes32 realm, uint256 paid, uint256 allocated);

    /// @param payoutToken The ERC-20 all realms are funded and paid in.
    /// @param initialOwner Manages posters; is a poster from the start.
    constructor(IERC20 payoutToken, address initialOwner) Ownable(initialOwner) {
        token = payoutToken;
        tokenBatchTransfer = _supportsBatchTransfer(address(payoutToken));
        isPoster[initialOwner] = true;
        emit PosterSet(initialOwner, true);
    }

    /// @notice Allows or disallows `account` to post epoch roots; only the owner.
    /// @param account The poster key.
    /// @param allowed Whether it may post.
    function setPoster(address account, bool allowed) external onlyOwner {
        isPoster[account] = allowed;
        emit PosterSet(account, allowed);
    }

    /// @notice Adds `amount` to `realm`'s funding, pulling it from the caller.
    /// @param realm The realm id (keccak256 of its name).
    /// @param amount Base units, approved to this contract beforehand.
    function fund(bytes32 realm, uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        _realms[realm].funded += amount;
        emit Funded(realm, msg.sender, amount);
        token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Posts the payout root of (`realm`, `epoch`) and allocates `total` of the realm's
    /// funding to it; only a poster. Write-once: posting the same root and total again is a no-op
    /// (returns false), anything else reverts.
    /// @param realm The realm id.
    /// @param epoch The closed epoch.
    /// @param root The StandardMerkleTree root of the epoch's claim and batch leaves.
    /// @param total The epoch's payouts (pushed plus newly claimable), at most the unallocated funding.
    /// @return posted True if this call posted the root, false if it was already posted.
    function postEpoch(bytes32 realm, uint256 epoch, bytes32 root, uint256 total) external returns (bool posted) {
        if (!isPoster[msg.sender]) revert NotPoster(msg.sender);
        if (root == bytes32(0)) revert ZeroRoot();
        Epoch storage record = _epochs[realm][epoch];
        bytes32 existing = record.root;
        if (existing != bytes32(0)) {
            if (existing != root) revert RootMismatch(realm, epoch, existing, root);
            if (record.total != total) revert TotalMismatch(realm, epoch, record.total, total);
            return false;
        }
        Realm storage budget = _realms[realm];
        uint256 allocated = uint256(budget.allocated) + total;
        if (allocated > budget.funded) {
            revert InsufficientFunding(realm, total, budget.funded - budget.allocated);
        }
        if (total > type(uint112).max || allocated > type(uint128).max) revert AmountTooLarge(total);
        record.root = root;
        record.total = uint112(total);
        budget.allocated = uint128(allocated);
        emit EpochPosted(realm, epoch, root, total);
        return true;
    }

    /// @notice Pays `account` its cumulative claimable payout in `realm` as committed by the root
    /// of `epoch`, minus what it claimed before. Anyone may call; the tokens go to `account`.
    /// @param realm The realm id.
    /// @param epoch A posted epoch whose tree has a claim leaf for `account`.
    /// @param account The payee.
    /// @param cumulative The leaf's cumulative claimable amount.
    /// @param proof The leaf's StandardMerkleTree proof.
    /// @return amount Base units paid.
    function claim(bytes32 realm, uint256 epoch, address account, uint256 cumulative, bytes32[] calldata proof)
        external
        returns (uint256 amount)
    {
        if (account == address(0)) revert ZeroAccount();
        uint256 already = claimed[realm][account];
        if (cumulative <= already) revert NothingToClaim(realm, account, cumulative, already);
        _verify(realm, epoch, account, cumulative, proof);
        amount = cumulative - already;
        claimed[realm][account] = cumulative;
        _spend(realm, amount);
        emit Claimed(realm, account, epoch, cumulative, amount);
        token.safeTransfer(account, amount);
    }

    /// @notice Pays push batch `batchIdx` of (`realm`, `epoch`): each entry packs the payee in the
    /// high 160 bits and its amount for this epoch in the low 96 bits. Anyone may push a batch the
    /// root commits to; a batch already pushed is a no-op (returns false).
    /// @param realm The realm id.
    /// @param epoch A posted epoch.
    /// @param batchIdx The batch's index, as committed in the tree.
    /// @param packed The batch's entries, in the committed order.
    /// @param proof The StandardMerkleTree proof of the batch leaf.
    /// @return pushed True if this call paid the batch, false if it was already paid.
    function pushBatch(
        bytes32 realm,
        uint256 epoch,
        uint256 batchIdx,
        bytes32[] calldata packed,
        bytes32[] calldata proof
    ) external returns (bool pushed) {
        Epoch storage record = _epochs[realm][epoch];
        if (_isPushed(record, realm, epoch, batchIdx)) return false;
        if (packed.length == 0) revert EmptyBatch();
        (bytes32 digest, bytes memory transferCall) = _digestAndTransferCall(batchIdx, packed);
        _verify(realm, epoch, address(0), uint256(digest), proof);
        uint256 amount = _sumAmounts(packed);
        uint256 pushedTotal = uint256(record.pushed) + amount;
        if (pushedTotal > record.total) revert PushExceedsTotal(realm, epoch, pushedTotal, record.total);
        record.pushed = uint112(pushedTotal);
        _markPushed(record, realm, epoch, batchIdx);
        _spend(realm, amount);
        emit BatchPushed(realm, epoch, batchIdx, packed.length, amount);
        _payBatch(packed, transferCall);
        return true;
    }

    /// @notice Funding and spending of `realm`.
    /// @return funded Everything ever funded.
    /// @return allocated Sum of the totals of posted epochs.
    /// @return paid Pushed plus claimed so far.
    function realmBudget(bytes32 realm) external view returns (uint256 funded, uint256 allocated, uint256 paid) {
        Realm storage budget = _realms[realm];
        return (budget.funded, budget.allocated, budget.paid);
    }

    /// @notice The posted record of (`realm`, `epoch`); a zero root means not posted.
    /// @return root The posted root.
    /// @return total The posted total.
    /// @return pushed Paid by pushes so far.
    function epochRecord(bytes32 realm, uint256 epoch)
        external
        view
        returns (bytes32 root, uint256 total, uint256 pushed)
    {
        Epoch storage record = _epochs[realm][epoch];
        return (record.root, record.total, record.pushed);
    }

    /// @notice Whether push batch `batchIdx` of (`realm`, `epoch`) was paid.
    function isBatchPushed(bytes32 realm, uint256 epoch, uint256 batchIdx) external view returns (bool) {
        return _isPushed(_epochs[realm][epoch], realm, epoch, batchIdx);
    }

    /// @notice The StandardMerkleTree leaf hash of (chain id, this contract, realm, epoch, account, amount).
    function leafHash(bytes32 realm, uint256 epoch, address account, uint256 amount) public view returns (bytes32) {
        return keccak256(bytes.concat(keccak256(abi.encode(block.chainid, address(this), realm, epoch, account, amount))));
    }

    /// @notice The commitment to a push batch: `keccak256(abi.encodePacked(batchIdx, packed))`.
    function batchDigest(uint256 batchIdx, bytes32[] calldata packed) public pure returns (bytes32) {
        return keccak256(abi.encodePacked(batchIdx, packed));
    }

    /// @dev Reverts unless (realm, epoch) is posted and its root contains the leaf.
    function _verify(bytes32 realm, uint256 epoch, address account, uint256 amount, bytes32[] calldata proof)
        private
        view
    {
        bytes32 root = _epochs[realm][epoch].root;
        if (root == bytes32(0)) revert EpochNotPosted(realm, epoch);
        bytes32 leaf = leafHash(realm, epoch, account, amount);
        if (!MerkleProof.verifyCalldata(proof, root, leaf)) revert InvalidProof(realm, epoch, leaf);
    }

    function _isPushed(Epoch storage record, bytes32 realm, uint256 epoch, uint256 batchIdx)
        private
        view
        returns (bool)
    {
        if (batchIdx < IN_RECORD_BATCHES) return record.firstBatches & (1 << batchIdx) != 0;
        uint256 later = batchIdx - IN_RECORD_BATCHES;
        return _laterBatches[realm][epoch][later >> 8] & (1 << (later & 0xff)) != 0;
    }

    function _markPushed(Epoch storage record, bytes32 realm, uint256 epoch, uint256 batchIdx) private {
        if (batchIdx < IN_RECORD_BATCHES) {
            record.firstBatches |= uint32(1 << batchIdx);
        } else {
            uint256 later = batchIdx - IN_RECORD_BATCHES;
            _laterBatches[realm][epoch][later >> 8] |= 1 << (later & 0xff);
        }
    }

    function _spend(bytes32 realm, uint256 amount) private {
        Realm storage budget = _realms[realm];
        uint256 paid = uint256(budget.paid) + amount;
        if (paid > budget.allocated) revert RealmOverspent(realm, paid, budget.allocated);
        budget.paid = uint128(paid);
    }

    function _sumAmounts(bytes32[] calldata packed) private pure returns (uint256 total) {
        // At most 2**96 per entry, so the sum of any calldata-sized batch fits in uint256.
        // Four entries per iteration: this loop runs once per pushed payee.
        assembly ("memory-safe") {
            let offset := packed.offset
            let end := add(offset, shl(5, packed.length))
            for { let end4 := sub(end, and(shl(5, packed.length), 0x60)) } lt(offset, end4) {
                offset := add(offset, 0x80)
            } {
                total := add(
                    add(total, and(calldataload(offset), AMOUNT_MASK)),
                    add(
                        add(and(calldataload(add(offset, 0x20)), AMOUNT_MASK), and(calldataload(add(offset, 0x40)), AMOUNT_MASK)),
                        and(calldataload(add(offset, 0x60)), AMOUNT_MASK)
                    )
                )
            }
            for {} lt(offset, end) { offset := add(offset, 0x20) } {
                total := add(total, and(calldataload(offset), AMOUNT_MASK))
            }
        }
    }

    /// @dev Copies the batch to memory once, laid out as the calldata of
    /// `transferBatch(packed)`, and hashes it in place with `batchIdx` in the length word.
    function _digestAndTransferCall(uint256 batchIdx, bytes32[] calldata packed)
        private
        pure
        returns (bytes32 digest, bytes memory transferCall)
    {
        bytes4 selector = IBatchTransfer.transferBatch.selector;
        assembly ("memory-safe") {
            let entriesSize := shl(5, packed.length)
            transferCall := mload(0x40)
            let size := add(0x44, entriesSize) // selector, array offset, length, entries
            mstore(transferCall, size)
            let body := add(transferCall, 0x20)
            mstore(body, selector)
            mstore(add(body, 0x04), 0x20)
            calldatacopy(add(body, 0x44), packed.offset, entriesSize)
            mstore(add(body, 0x24), batchIdx)
            digest := keccak256(add(body, 0x24), add(0x20, entriesSize))
            mstore(add(body, 0x24), packed.length)
            mstore(0x40, add(body, and(add(size, 0x1f), not(0x1f))))
        }
    }

    function _payBatch(bytes32[] calldata packed, bytes memory transferCall) private {
        if (tokenBatchTransfer) {
            Address.functionCall(address(token), transferCall);
            return;
        }
        for (uint256 i; i < packed.length; ++i) {
            uint256 entry = uint256(packed[i]);
            token.safeTransfer(address(uint160(entry >> 96)), entry & AMOUNT_MASK);
        }
    }

    function _supportsBatchTransfer(address candidate) private view returns (bool) {
        try IERC165(candidate).supportsInterface(type(IBatchTransfer).interfaceId) returns (bool ok) {
            return ok;
        } catch {
            return false;
        }
    }
}
