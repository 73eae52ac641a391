// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";

/// @title Directed stakes in WAMP realms (WEP008), realm registry and realm configuration
/// @notice A realm is registered under its name (its id is `keccak256(bytes(name))`) with a keeper
/// and its parameters; the keeper sets parameters and enables APIs (URI prefixes earning their
/// vendor). A staker locks WMP in a realm under a role, on a target (the realm itself is
/// `address(0)`, otherwise a router operator, a service operator or a developer). Unstaking is
/// delayed: `requestUnstake` starts the clock, `withdraw` pays out after `unstakeDelaySeconds`.
/// The realm keeper may slash staked and unstaking tokens of its realm. Every stake event carries
/// the position's new staked total, so an indexer derives the total without reading state.
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

    /// @notice Realm parameters set by the keeper (meshledger's `RealmParams`, same order).
    /// @param rfrBps Realm funding rate in bps of reserved stake (<= 10000).
    /// @param stakePerMpb Base units staked per message/block of bandwidth (> 0).
    /// @param epochBlocks Blocks per payout epoch (> 0).
    /// @param fundingPeriodBlocks Blocks over which the funding rate applies (> 0).
    /// @param weightRouterBps Payout share of router operators (the three weights sum to 10000).
    /// @param weightServiceBps Payout share of service operators.
    /// @param weightVendorBps Payout share of API vendors.
    /// @param pricePerMessage SWAP price of one message, in base units.
    /// @param usdPricePerMessage SWAP price of one message in 1e-18 USD (0: priced in base units);
    /// routers convert it at `priceFeed`'s last valid price and refuse SWAP while it is stale.
    /// @param priceFeed Chainlink AggregatorV3 feed of the token's USD price (zero: none).
    struct RealmParams {
        uint16 rfrBps;
        uint128 stakePerMpb;
        uint64 epochBlocks;
        uint64 fundingPeriodBlocks;
        uint16 weightRouterBps;
        uint16 weightServiceBps;
        uint16 weightVendorBps;
        uint128 pricePerMessage;
        uint128 usdPricePerMessage;
        address priceFeed;
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
    /// @notice Parameters in force for each registered realm (four storage words).
    mapping(bytes32 realm => RealmParams) private _params;
    /// @notice Vendor of each enabled API, by realm and `keccak256(bytes(prefix))`.
    mapping(bytes32 realm => mapping(bytes32 prefixHash => address vendor)) public apiVendor;

    uint256 private constant BPS = 10_000;

    // ---- events ----
    event RealmRegistered(bytes32 indexed realm, address indexed keeper, string name, RealmParams params);
    event RealmParamsSet(bytes32 indexed realm, RealmParams params);
    event ApiEnabled(bytes32 indexed realm, address indexed vendor, string prefix);
    event KeeperChanged(bytes32 indexed realm, address indexed previousKeeper, address indexed newKeeper);
    // Stake events: `amount` is the change, `staked` the position's staked total after it.
    event Staked(
        bytes32 indexed realm, address indexed staker, Role role, address indexed target, uint256 amount, uint256 staked
    );
    event UnstakeRequested(
        bytes32 indexed realm,
        address indexed staker,
        Role role,
        address indexed target,
        uint256 amount,
        uint256 staked,
        uint64 unlockAt
    );
    event Withdrawn(
        bytes32 indexed realm, address indexed staker, Role role, address indexed target, uint256 amount, uint256 staked
    );
    event Slashed(
        bytes32 indexed realm,
        address indexed staker,
        Role role,
        address target,
        uint256 amount,
        uint256 staked,
        address indexed recipient
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
    error EmptyName();
    error EmptyPrefix();
    error ApiAlreadyEnabled(bytes32 realm, string prefix, address vendor);
    error WeightsNotWhole(uint256 sumBps);
    error RateTooHigh(uint256 rfrBps);
    error ZeroParameter(string name);

    /// @param stakedToken The token staked in every realm.
    /// @param delaySeconds Seconds an unstake request waits before it can be withdrawn.
    constructor(IERC20 stakedToken, uint64 delaySeconds) {
        token = stakedToken;
        unstakeDelaySeconds = delaySeconds;
    }

    /// @notice Registers the realm `name` with `keeper` as its keeper and `params` in force;
    /// first come, first served.
    /// @param name The realm's name (non-empty, UTF-8); its id is `keccak256(bytes(name))`.
    /// @param keeper The account allowed to configure, slash and hand over the realm.
    /// @param params The realm's initial parameters (see `RealmParams`).
    /// @return realm The realm id.
    function registerRealm(string calldata name, address keeper, RealmParams calldata params)
        external
        returns (bytes32 realm)
    {
        if (bytes(name).length == 0) revert EmptyName();
        if (keeper == address(0)) revert ZeroAddress();
        _checkParams(params);
        realm = keccak256(bytes(name));
        address current = keeperOf[realm];
        if (current != address(0)) revert RealmAlreadyRegistered(realm, current);
        keeperOf[realm] = keeper;
        _params[realm] = params;
        emit RealmRegistered(realm, keeper, name, params);
    }

    /// @notice Sets the realm's parameters; only its keeper. They apply from the first epoch that
    /// starts at or after this block (the ledger's rule).
    /// @param realm The realm id.
    /// @param params The new parameters (see `RealmParams`).
    function setRealmParams(bytes32 realm, RealmParams calldata params) external {
        _onlyKeeper(realm);
        _checkParams(params);
        _params[realm] = params;
        emit RealmParamsSet(realm, params);
    }

    /// @notice Enables the API under URI `prefix` in the realm, earning `vendor` by its calls;
    /// only the keeper. A prefix is enabled once (its vendor never changes).
    /// @param realm The realm id.
    /// @param prefix A WAMP URI prefix (non-empty), matched on component boundaries.
    /// @param vendor The developer paid for calls under `prefix`.
    function enableApi(bytes32 realm, string calldata prefix, address vendor) external {
        _onlyKeeper(realm);
        if (bytes(prefix).length == 0) revert EmptyPrefix();
        if (vendor == address(0)) revert ZeroAddress();
        bytes32 prefixHash = keccak256(bytes(prefix));
        address current = apiVendor[realm][prefixHash];
        if (current != address(0)) revert ApiAlreadyEnabled(realm, prefix, current);
        apiVendor[realm][prefixHash] = vendor;
        emit ApiEnabled(realm, vendor, prefix);
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
        emit Staked(realm, msg.sender, role, target, amount, staked);
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
        emit UnstakeRequested(realm, msg.sender, role, target, amount, staked - amount, unlockAt);
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
        emit Withdrawn(realm, msg.sender, role, target, amount, position.staked);
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
        emit Slashed(realm, staker, role, target, amount, staked - fromStaked, recipient);
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

    /// @notice The parameters in force for `realm` (all zero: not registered).
    function paramsOf(bytes32 realm) external view returns (RealmParams memory) {
        return _params[realm];
    }

    /// @notice The storage key of a position.
    function positionKey(bytes32 realm, address staker, Role role, address target) public pure returns (bytes32) {
        return keccak256(abi.encode(realm, staker, role, target));
    }

    /// @dev The ledger's invariants of `RealmParams`: weights sum to 10000 bps, the funding rate is
    /// at most 100%, and every divisor is non-zero.
    function _checkParams(RealmParams calldata params) private pure {
        uint256 weights = uint256(params.weightRouterBps) + params.weightServiceBps + params.weightVendorBps;
        if (weights != BPS) revert WeightsNotWhole(weights);
        if (params.rfrBps > BPS) revert RateTooHigh(params.rfrBps);
        if (params.stakePerMpb == 0) revert ZeroParameter("stakePerMpb");
        if (params.epochBlocks == 0) revert ZeroParameter("epochBlocks");
        if (params.fundingPeriodBlocks == 0) revert ZeroParameter("fundingPeriodBlocks");
        if (params.usdPricePerMessage != 0 && params.priceFeed == address(0)) revert ZeroParameter("priceFeed");
    }

    function _onlyKeeper(bytes32 realm) private view returns (address keeper) {
        keeper = keeperOf[realm];
        if (keeper == address(0)) revert UnknownRealm(realm);
        if (msg.sender != keeper) revert NotKeeper(realm, msg.sender, keeper);
    }
}
