// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @notice What the registry needs of RealmStaking: whether a realm is registered.
interface IRealmKeepers {
    function keeperOf(bytes32 realm) external view returns (address);
}

/// @title Service marketplace registry: services, servers' offers and rewards
/// @notice A service is an API of the mesh: procedures under a WAMP URI prefix, defined by a
/// specification (its hash). Its id is `keccak256(bytes(apiPrefix))`, so one prefix is one
/// service. A deterministic service names a verifier (the hash of a WebAssembly module; zero:
/// exact equality of results) and how many redundant requests it compares (`minRequests`).
/// Servers (service operators) offer services in a realm at a price per call, and list the
/// services they reward in a realm ("if you run my service I will run yours"). Every change is
/// an event; the indexer brings them into the ledger's log.
contract ServiceRegistry {
    /// @notice A registered service.
    /// @param publisher Who registered it and may update it.
    /// @param deterministic Whether every correct server returns the same result for a request.
    /// @param minRequests Redundant requests the verifier compares (>= 2 when deterministic).
    /// @param specHash Hash of the service's specification.
    /// @param verifierHash Hash of the verifier's WebAssembly module (zero: exact equality).
    /// @param apiPrefix The WAMP URI prefix of its procedures.
    struct Service {
        address publisher;
        bool deterministic;
        uint16 minRequests;
        bytes32 specHash;
        bytes32 verifierHash;
        string apiPrefix;
    }

    /// @notice An offer of one server for one service in one realm.
    /// @param pricePerCall Base units a client pays per call.
    /// @param active Whether the offer stands.
    struct Offer {
        uint128 pricePerCall;
        bool active;
    }

    // ---- storage ----
    /// @notice Where realms are registered (an offer or reward names a registered realm).
    IRealmKeepers public immutable realms;
    /// @notice Services by id (`keccak256(bytes(apiPrefix))`); publisher zero: not registered.
    mapping(bytes32 serviceId => Service) private _services;
    /// @notice Offers by realm, server and service.
    mapping(bytes32 realm => mapping(address server => mapping(bytes32 serviceId => Offer))) public offers;
    /// @notice Services each server rewards in each realm.
    mapping(bytes32 realm => mapping(address server => mapping(bytes32 serviceId => bool))) public rewards;

    /// @notice Longest accepted API prefix (a WAMP URI the ledger keeps in its tables).
    uint256 public constant MAX_PREFIX_BYTES = 255;
    /// @notice Most redundant requests a verifier may ask for (bounds what a router fans out).
    uint16 public constant MAX_MIN_REQUESTS = 16;

    // ---- events ----
    event ServiceRegistered(
        bytes32 indexed serviceId,
        address indexed publisher,
        string apiPrefix,
        bytes32 specHash,
        bool deterministic,
        bytes32 verifierHash,
        uint16 minRequests
    );
    event ServiceUpdated(
        bytes32 indexed serviceId, bytes32 specHash, bool deterministic, bytes32 verifierHash, uint16 minRequests
    );
    event OfferSet(bytes32 indexed realm, address indexed server, bytes32 indexed serviceId, uint256 pricePerCall);
    event OfferWithdrawn(bytes32 indexed realm, address indexed server, bytes32 indexed serviceId);
    event RewardSet(bytes32 indexed realm, address indexed server, bytes32 indexed serviceId);
    event RewardWithdrawn(bytes32 indexed realm, address indexed server, bytes32 indexed serviceId);

    // ---- errors ----
    error ZeroAddress();
    error BadPrefix(uint256 length);
    error ServiceExists(bytes32 serviceId, address publisher);
    error UnknownService(bytes32 serviceId);
    error NotPublisher(bytes32 serviceId, address caller, address publisher);
    error BadMinRequests(bool deterministic, uint16 minRequests);
    error UnknownRealm(bytes32 realm);
    error NoOffer(bytes32 realm, address server, bytes32 serviceId);
    error NoReward(bytes32 realm, address server, bytes32 serviceId);

    /// @param realms_ The RealmStaking contract whose realms offers and rewards name.
    constructor(IRealmKeepers realms_) {
        if (address(realms_) == address(0)) revert ZeroAddress();
        realms = realms_;
    }

    /// @notice The id of the service under `apiPrefix`.
    function serviceIdOf(string calldata apiPrefix) public pure returns (bytes32) {
        return keccak256(bytes(apiPrefix));
    }

    /// @notice A registered service (publisher zero: none).
    function serviceOf(bytes32 serviceId) external view returns (Service memory) {
        return _services[serviceId];
    }

    /// @notice Registers the service under `apiPrefix`; the caller becomes its publisher.
    /// @param apiPrefix WAMP URI prefix of the service's procedures (1..MAX_PREFIX_BYTES bytes).
    /// @param specHash Hash of its specification.
    /// @param deterministic Whether its results can be compared across servers.
    /// @param verifierHash Hash of the verifier module (zero: exact equality).
    /// @param minRequests Redundant requests compared (2..MAX_MIN_REQUESTS if deterministic, else 0).
    /// @return serviceId The service's id.
    function registerService(
        string calldata apiPrefix,
        bytes32 specHash,
        bool deterministic,
        bytes32 verifierHash,
        uint16 minRequests
    ) external returns (bytes32 serviceId) {
        uint256 length = bytes(apiPrefix).length;
        if (length == 0 || length > MAX_PREFIX_BYTES) revert BadPrefix(length);
        _checkVerification(deterministic, minRequests);
        serviceId = keccak256(bytes(apiPrefix));
        Service storage s = _services[serviceId];
        if (s.publisher != address(0)) revert ServiceExists(serviceId, s.publisher);
        s.publisher = msg.sender;
        s.deterministic = deterministic;
        s.minRequests = minRequests;
        s.specHash = specHash;
        s.verifierHash = verifierHash;
        s.apiPrefix = apiPrefix;
        emit ServiceRegistered(serviceId, msg.sender, apiPrefix, specHash, deterministic, verifierHash, minRequests);
    }

    /// @notice The publisher changes the service's specification or verification.
    function updateService(
        bytes32 serviceId,
        bytes32 specHash,
        bool deterministic,
        bytes32 verifierHash,
        uint16 minRequests
    ) external {
        Service storage s = _publishedBy(serviceId, msg.sender);
        _checkVerification(deterministic, minRequests);
        s.deterministic = deterministic;
        s.minRequests = minRequests;
        s.specHash = specHash;
        s.verifierHash = verifierHash;
        emit ServiceUpdated(serviceId, specHash, deterministic, verifierHash, minRequests);
    }

    /// @notice The caller offers `serviceId` in `realm` at `pricePerCall` (a new price replaces
    /// the old one).
    function setOffer(bytes32 realm, bytes32 serviceId, uint128 pricePerCall) external {
        _checkRealm(realm);
        _checkService(serviceId);
        offers[realm][msg.sender][serviceId] = Offer(pricePerCall, true);
        emit OfferSet(realm, msg.sender, serviceId, pricePerCall);
    }

    /// @notice The caller no longer offers `serviceId` in `realm`.
    function withdrawOffer(bytes32 realm, bytes32 serviceId) external {
        if (!offers[realm][msg.sender][serviceId].active) revert NoOffer(realm, msg.sender, serviceId);
        delete offers[realm][msg.sender][serviceId];
        emit OfferWithdrawn(realm, msg.sender, serviceId);
    }

    /// @notice The caller rewards `serviceId` in `realm`: it wants to see it used, and runs at
    /// least as many calls of the services of servers that do.
    function setReward(bytes32 realm, bytes32 serviceId) external {
        _checkRealm(realm);
        _checkService(serviceId);
        rewards[realm][msg.sender][serviceId] = true;
        emit RewardSet(realm, msg.sender, serviceId);
    }

    /// @notice The caller no longer rewards `serviceId` in `realm`.
    function withdrawReward(bytes32 realm, bytes32 serviceId) external {
        if (!rewards[realm][msg.sender][serviceId]) revert NoReward(realm, msg.sender, serviceId);
        delete rewards[realm][msg.sender][serviceId];
        emit RewardWithdrawn(realm, msg.sender, serviceId);
    }

    function _publishedBy(bytes32 serviceId, address caller) private view returns (Service storage s) {
        s = _services[serviceId];
        if (s.publisher == address(0)) revert UnknownService(serviceId);
        if (s.publisher != caller) revert NotPublisher(serviceId, caller, s.publisher);
    }

    function _checkService(bytes32 serviceId) private view {
        if (_services[serviceId].publisher == address(0)) revert UnknownService(serviceId);
    }

    function _checkRealm(bytes32 realm) private view {
        if (realms.keeperOf(realm) == address(0)) revert UnknownRealm(realm);
    }

    function _checkVerification(bool deterministic, uint16 minRequests) private pure {
        bool ok = deterministic ? (minRequests >= 2 && minRequests <= MAX_MIN_REQUESTS) : minRequests == 0;
        if (!ok) revert BadMinRequests(deterministic, minRequests);
    }
}
