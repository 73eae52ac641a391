// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";

/// @title Directed stakes in WAMP realms (WEP008)
/// @notice A staker locks WMP in a realm under a role, on a target (the realm itself is
/// `address(0)`, otherwise a router operator, a service operator or a developer). Unstaking is
/// delayed: `requestUnstake` starts the clock, `withdraw` pays out after `unstakeDelaySeconds`.
/// The realm keeper may slash staked and unstaking tokens of its realm.
contract RealmStaking {
    using SafeERC20 for IERC20;

    /// @notice WEP008 roles; a stake is made in one of them.
    enum Role {
        User,
        RouterOperator,
        ServiceOperator,
        ServiceVendor,
        Publisher,
        Keeper
    }

    /// @notice One staker's position for (realm, role, target).
    /// @param staked Base units at stake (slashable, counted for bandwidth).
    /// @param unstaking Base units waiting for the delay (still slashable).
    /// @param unlockAt Unix time after which `unstaking` may be withdrawn.
    struct Position {
        uint128 staked;
        uint128 unstaking;
        uint64 unlockAt;
    }

    // ---- storage ----
    /// @notice The staked token.
    IERC20 public immutable token;
    /// @notice Seconds between `requestUnstake` and the earliest `withdraw`.
    uint64 public immutable unstakeDelaySeconds;
    /// @notice Keeper of each registered realm (zero: not registered).
    mapping(bytes32 realm => address keeper) public keeperOf;
    /// @notice Positions by `positionKey(realm, staker, role, target)`.
    mapping(bytes32 key => Position) private _positions;

    // ---- events ----
    event RealmRegistered(bytes32 indexed realm, address indexed keeper);
    event KeeperChanged(bytes32 indexed realm, address indexed previousKeeper, address indexed newKeeper);
    event Staked(bytes32 indexed realm, address indexed staker, Role role, address indexed target, uint256 amount);
    event UnstakeRequested(
        bytes32 indexed realm, address indexed staker, Role role, address indexed target, uint256 amount, uint64 unlockAt
    );
    event Withdrawn(bytes32 indexed realm, address indexed staker, Role role, address indexed target, uint256 amount);
    event Slashed(
        bytes32 indexed realm, address indexed staker, Role role, address target, uint256 amount, address indexed recipient
    );

    // ---- errors ----
    error RealmAlreadyRegistered(bytes32 realm, address keeper);
    error UnknownRealm(bytes32 realm);
    error NotKeeper(bytes32 realm, address caller, address keeper);
    error ZeroAddress();
    error ZeroAmount();
    error AmountTooLarge(uint256 amount);
    error InsufficientStake(uint256 requested, uint256 staked);
    error NothingToWithdraw();
    error StillLocked(uint64 unlockAt, uint256 nowSeconds);

    /// @param stakedToken The token staked in every realm.
    /// @param delaySeconds Seconds an unstake request waits before it can be withdrawn.
    constructor(IERC20 stakedToken, uint64 delaySeconds) {
        token = stakedToken;
        unstakeDelaySeconds = delaySeconds;
    }

    /// @notice Registers `realm` with `keeper` as its keeper; first come, first served.
    /// @param realm The realm id (keccak256 of its name).
    /// @param keeper The account allowed to slash and to hand over the realm.
    function registerRealm(bytes32 realm, address keeper) external {
        if (keeper == address(0)) revert ZeroAddress();
        address current = keeperOf[realm];
        if (current != address(0)) revert RealmAlreadyRegistered(realm, current);
        keeperOf[realm] = keeper;
        emit RealmRegistered(realm, keeper);
    }

    /// @notice Hands the realm over to `newKeeper`; only the current keeper.
    /// @param realm The realm id.
    /// @param newKeeper The next keeper (non-zero).
    function setKeeper(bytes32 realm, address newKeeper) external {
        address keeper = _onlyKeeper(realm);
        if (newKeeper == address(0)) revert ZeroAddress();
        keeperOf[realm] = newKeeper;
        emit KeeperChanged(realm, keeper, newKeeper);
    }

    /// @notice Stakes `amount` in `realm` as `role` on `target`, pulling it from the caller.
    /// @param realm A registered realm.
    /// @param role The staker's role in the realm.
    /// @param target Whom the stake backs; `address(0)` for the realm itself.
    /// @param amount Base units, approved to this contract beforehand.
    function stake(bytes32 realm, Role role, address target, uint256 amount) external {
        if (keeperOf[realm] == address(0)) revert UnknownRealm(realm);
        if (amount == 0) revert ZeroAmount();
        if (amount > type(uint128).max) revert AmountTooLarge(amount);
        Position storage position = _positions[positionKey(realm, msg.sender, role, target)];
        uint256 staked = position.staked + amount;
        if (staked > type(uint128).max) revert AmountTooLarge(staked);
        position.staked = uint128(staked);
        emit Staked(realm, msg.sender, role, target, amount);
        token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Moves `amount` from staked to unstaking and (re)starts the delay for everything
    /// unstaking in this position.
    /// @param realm The realm of the position.
    /// @param role The role of the position.
    /// @param target The target of the position.
    /// @param amount Base units to unstake, at most the staked amount.
    function requestUnstake(bytes32 realm, Role role, address target, uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        Position storage position = _positions[positionKey(realm, msg.sender, role, target)];
        uint256 staked = position.staked;
        if (amount > staked) revert InsufficientStake(amount, staked);
        uint64 unlockAt = uint64(block.timestamp) + unstakeDelaySeconds;
        position.staked = uint128(staked - amount);
        position.unstaking += uint128(amount);
        position.unlockAt = unlockAt;
        emit UnstakeRequested(realm, msg.sender, role, target, amount, unlockAt);
    }

    /// @notice Pays the caller everything unstaking in the position once the delay has passed.
    /// @param realm The realm of the position.
    /// @param role The role of the position.
    /// @param target The target of the position.
    /// @return amount The base units paid.
    function withdraw(bytes32 realm, Role role, address target) external returns (uint256 amount) {
        Position storage position = _positions[positionKey(realm, msg.sender, role, target)];
        amount = position.unstaking;
        if (amount == 0) revert NothingToWithdraw();
        if (block.timestamp < position.unlockAt) revert StillLocked(position.unlockAt, block.timestamp);
        position.unstaking = 0;
        emit Withdrawn(realm, msg.sender, role, target, amount);
        token.safeTransfer(msg.sender, amount);
    }

    /// @notice Takes up to `amount` from a position of `realm` (staked first, then unstaking) and
    /// sends it to `recipient`; only the realm keeper.
    /// @param realm The realm whose keeper calls.
    /// @param staker The slashed staker.
    /// @param role The role of the slashed position.
    /// @param target The target of the slashed position.
    /// @param amount Base units to take; reverts if the position holds less.
    /// @param recipient Receiver of the slashed tokens (a treasury, a burn address, a victim).
    function slash(bytes32 realm, address staker, Role role, address target, uint256 amount, address recipient)
        external
    {
        _onlyKeeper(realm);
        if (amount == 0) revert ZeroAmount();
        if (recipient == address(0)) revert ZeroAddress();
        Position storage position = _positions[positionKey(realm, staker, role, target)];
        uint256 staked = position.staked;
        uint256 unstaking = position.unstaking;
        if (amount > staked + unstaking) revert InsufficientStake(amount, staked + unstaking);
        uint256 fromStaked = amount < staked ? amount : staked;
        position.staked = uint128(staked - fromStaked);
        position.unstaking = uint128(unstaking - (amount - fromStaked));
        emit Slashed(realm, staker, role, target, amount, recipient);
        token.safeTransfer(recipient, amount);
    }

    /// @notice The position of `staker` in `realm` as `role` on `target`.
    /// @return staked Base units at stake.
    /// @return unstaking Base units waiting for the delay.
    /// @return unlockAt Unix time after which `unstaking` can be withdrawn.
    function positionOf(bytes32 realm, address staker, Role role, address target)
        external
        view
        returns (uint256 staked, uint256 unstaking, uint64 unlockAt)
    {
        Position storage position = _positions[positionKey(realm, staker, role, target)];
        return (position.staked, position.unstaking, position.unlockAt);
    }

    /// @notice The storage key of a position.
    function positionKey(bytes32 realm, address staker, Role role, address target) public pure returns (bytes32) {
        return keccak256(abi.encode(realm, staker, role, target));
    }

    function _onlyKeeper(bytes32 realm) private view returns (address keeper) {
        keeper = keeperOf[realm];
        if (keeper == address(0)) revert UnknownRealm(realm);
        if (msg.sender != keeper) revert NotKeeper(realm, msg.sender, keeper);
    }
}
