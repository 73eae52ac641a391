// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {MockV3Aggregator} from "@chainlink/contracts/src/v0.8/tests/MockV3Aggregator.sol";

/// @title Chainlink AggregatorV3 feed for tests and the dev stack
/// @notice Chainlink's own `MockV3Aggregator` (npm @chainlink/contracts 1.2.0), compiled here so
/// the indexer's feed reader is tested against the real `latestRoundData` ABI. `updateRoundData`
/// sets round id, answer, `updatedAt` and `startedAt`; with answer 0 (up) or 1 (down) the same
/// contract serves as an L2 sequencer-uptime feed.
contract FeedMock is MockV3Aggregator {
    /// @param feedDecimals Decimals of the answer.
    /// @param initialAnswer The first round's answer.
    constructor(uint8 feedDecimals, int256 initialAnswer) MockV3Aggregator(feedDecimals, initialAnswer) {}
}
