// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @notice What the registry needs of RealmStaking: a router operator's provision stake.
interface IRealmPositions {
    function positionOf(bytes32 realm, address staker, uint8 role, address target)
        external
        view
        returns (uint256 staked, uint256 unstaking, uint64 unlockAt);
}

/// @title Router endpoints of a realm
/// @notice A router operator announces the public WebSocket endpoint of its router for a realm
/// where it holds a provision stake (RealmStaking role RouterOperator, target the realm itself:
/// `address(0)`). Routers of the realm link to each other from this list and clients pick a
/// router from it. The stake is checked when the endpoint is announced; the indexer and the
/// routers drop an operator whose provision stake falls to zero later (the ledger's rule), and
/// anyone may remove such an entry here (`prune`), so the list does not fill with the departed.
contract RouterRegistry {
    /// @notice RealmStaking's role index of a router operator (`Role.RouterOperator`).
    uint8 public constant ROUTER_OPERATOR = 1;
    /// @notice Longest accepted endpoint URL, in bytes.
    uint256 public constant MAX_URL_BYTES = 256;
    /// @notice Most routers announced in one realm (bounds what a router dials and a view returns).
    uint256 public constant MAX_ROUTERS = 64;

    /// @notice Where provision stakes are held.
    IRealmPositions public immutable staking;
    /// @notice Operators with an endpoint, per realm (unordered).
    mapping(bytes32 realm => address[]) private _operators;
    /// @notice Each operator's endpoint per realm ("": none).
    mapping(bytes32 realm => mapping(address operator => string)) public endpointOf;

    event RouterAnnounced(bytes32 indexed realm, address indexed operator, string url, uint256 stake);
    event RouterWithdrawn(bytes32 indexed realm, address indexed operator);

    error ZeroAddress();
    error BadUrl(uint256 length);
    error NoProvisionStake(bytes32 realm, address operator);
    error RealmFull(bytes32 realm, uint256 routers);
    error NotAnnounced(bytes32 realm, address operator);
    error StillStaked(bytes32 realm, address operator, uint256 stake);

    /// @param staking_ The RealmStaking contract whose provision stakes count.
    constructor(IRealmPositions staking_) {
        if (address(staking_) == address(0)) revert ZeroAddress();
        staking = staking_;
    }

    /// @notice Announce (or move) the caller's router endpoint in `realm`: a `ws://` or `wss://`
    /// URL of at most MAX_URL_BYTES; the caller must hold a provision stake there.
    function announce(bytes32 realm, string calldata url) external {
        _checkUrl(bytes(url));
        uint256 stake = _provision(realm, msg.sender);
        if (stake == 0) revert NoProvisionStake(realm, msg.sender);
        if (bytes(endpointOf[realm][msg.sender]).length == 0) {
            uint256 routers = _operators[realm].length;
            if (routers >= MAX_ROUTERS) revert RealmFull(realm, routers);
            _operators[realm].push(msg.sender);
        }
        endpointOf[realm][msg.sender] = url;
        emit RouterAnnounced(realm, msg.sender, url, stake);
    }

    /// @notice Withdraw the caller's endpoint from `realm`.
    function withdraw(bytes32 realm) external {
        _remove(realm, msg.sender);
    }

    /// @notice Remove `operator`'s endpoint once its provision stake in `realm` is zero (anyone).
    function prune(bytes32 realm, address operator) external {
        uint256 stake = _provision(realm, operator);
        if (stake != 0) revert StillStaked(realm, operator, stake);
        _remove(realm, operator);
    }

    /// @notice The realm's announced routers and their endpoints (at most MAX_ROUTERS).
    function endpoints(bytes32 realm) external view returns (address[] memory operators, string[] memory urls) {
        operators = _operators[realm];
        urls = new string[](operators.length);
        for (uint256 i = 0; i < operators.length; i++) {
            urls[i] = endpointOf[realm][operators[i]];
        }
    }

    function _remove(bytes32 realm, address operator) private {
        if (bytes(endpointOf[realm][operator]).length == 0) revert NotAnnounced(realm, operator);
        delete endpointOf[realm][operator];
        address[] storage list = _operators[realm];
        for (uint256 i = 0; i < list.length; i++) {
            if (list[i] == operator) {
                list[i] = list[list.length - 1];
                list.pop();
                break;
            }
        }
        emit RouterWithdrawn(realm, operator);
    }

    function _provision(bytes32 realm, address operator) private view returns (uint256 staked) {
        (staked,,) = staking.positionOf(realm, operator, ROUTER_OPERATOR, address(0));
    }

    /// @dev `ws://` or `wss://` and something after it, at most MAX_URL_BYTES, no spaces or
    /// control characters (an endpoint is dialed as given).
    function _checkUrl(bytes calldata url) private pure {
        uint256 n = url.length;
        if (n > MAX_URL_BYTES) revert BadUrl(n);
        uint256 scheme = _startsWith(url, "wss://") ? 6 : _startsWith(url, "ws://") ? 5 : 0;
        if (scheme == 0 || n <= scheme) revert BadUrl(n);
        for (uint256 i = 0; i < n; i++) {
            if (uint8(url[i]) <= 0x20 || uint8(url[i]) == 0x7f) revert BadUrl(n);
        }
    }

    function _startsWith(bytes calldata data, bytes memory prefix) private pure returns (bool) {
        if (data.length < prefix.length) return false;
        for (uint256 i = 0; i < prefix.length; i++) {
            if (data[i] != prefix[i]) return false;
        }
        return true;
    }
}
