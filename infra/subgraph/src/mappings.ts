// One handler per event: store the log as an immutable entity (see schema.graphql).
import { BigInt, Bytes, Entity, Value, ethereum } from "@graphprotocol/graph-ts";
import { RealmRegistered, RealmParamsSet, ApiEnabled, KeeperChanged, Staked, UnstakeRequested, StakeWithdrawn, Slashed, Deposited, ChequeCashed, ChequeBounced, ChequebookWithdrawn, ChequebookCreated, Funded, EpochPosted, BatchPushed, Claimed, Transfer } from "../generated/schema";
import { RealmRegistered as RealmRegisteredEvent, RealmParamsSet as RealmParamsSetEvent, ApiEnabled as ApiEnabledEvent, KeeperChanged as KeeperChangedEvent, Staked as StakedEvent, UnstakeRequested as UnstakeRequestedEvent, Withdrawn as StakeWithdrawnEvent, Slashed as SlashedEvent } from "../generated/RealmStaking/RealmStaking";
import { Deposited as DepositedEvent, ChequeCashed as ChequeCashedEvent, ChequeBounced as ChequeBouncedEvent, Withdrawn as ChequebookWithdrawnEvent } from "../generated/Chequebook/Chequebook";
import { ChequebookCreated as ChequebookCreatedEvent } from "../generated/ChequebookFactory/ChequebookFactory";
import { FactoryChequebook } from "../generated/templates";
import { Funded as FundedEvent, EpochPosted as EpochPostedEvent, BatchPushed as BatchPushedEvent, Claimed as ClaimedEvent } from "../generated/EpochSettlement/EpochSettlement";
import { Transfer as TransferEvent } from "../generated/WMPToken/WMPToken";

// The entity id: block hash ++ log index (unique across branches, as the indexer's identity).
function logId(event: ethereum.Event): Bytes {
  return event.block.hash.concatI32(event.logIndex.toI32());
}

// Where the log sits: the fields every entity has.
function withLog(e: Entity, event: ethereum.Event): void {
  e.set("contract", Value.fromBytes(event.address));
  e.set("blockNumber", Value.fromBigInt(event.block.number));
  e.set("blockHash", Value.fromBytes(event.block.hash));
  e.set("logIndex", Value.fromBigInt(event.logIndex));
  e.set("txHash", Value.fromBytes(event.transaction.hash));
}

export function handleRealmRegistered(event: RealmRegisteredEvent): void {
  const e = new RealmRegistered(logId(event));
  withLog(e, event);
  e.realm = event.params.realm;
  e.keeper = event.params.keeper;
  e.name = event.params.name;
  e.rfrBps = BigInt.fromI32(event.params.params.rfrBps);
  e.stakePerMpb = event.params.params.stakePerMpb;
  e.epochBlocks = event.params.params.epochBlocks;
  e.fundingPeriodBlocks = event.params.params.fundingPeriodBlocks;
  e.weightRouterBps = BigInt.fromI32(event.params.params.weightRouterBps);
  e.weightServiceBps = BigInt.fromI32(event.params.params.weightServiceBps);
  e.weightVendorBps = BigInt.fromI32(event.params.params.weightVendorBps);
  e.pricePerMessage = event.params.params.pricePerMessage;
  e.usdPricePerMessage = event.params.params.usdPricePerMessage;
  e.priceFeed = event.params.params.priceFeed;
  e.save();
}

export function handleRealmParamsSet(event: RealmParamsSetEvent): void {
  const e = new RealmParamsSet(logId(event));
  withLog(e, event);
  e.realm = event.params.realm;
  e.rfrBps = BigInt.fromI32(event.params.params.rfrBps);
  e.stakePerMpb = event.params.params.stakePerMpb;
  e.epochBlocks = event.params.params.epochBlocks;
  e.fundingPeriodBlocks = event.params.params.fundingPeriodBlocks;
  e.weightRouterBps = BigInt.fromI32(event.params.params.weightRouterBps);
  e.weightServiceBps = BigInt.fromI32(event.params.params.weightServiceBps);
  e.weightVendorBps = BigInt.fromI32(event.params.params.weightVendorBps);
  e.pricePerMessage = event.params.params.pricePerMessage;
  e.usdPricePerMessage = event.params.params.usdPricePerMessage;
  e.priceFeed = event.params.params.priceFeed;
  e.save();
}

export function handleApiEnabled(event: ApiEnabledEvent): void {
  const e = new ApiEnabled(logId(event));
  withLog(e, event);
  e.realm = event.params.realm;
  e.vendor = event.params.vendor;
  e.prefix = event.params.prefix;
  e.save();
}

export function handleKeeperChanged(event: KeeperChangedEvent): void {
  const e = new KeeperChanged(logId(event));
  withLog(e, event);
  e.realm = event.params.realm;
  e.previousKeeper = event.params.previousKeeper;
  e.newKeeper = event.params.newKeeper;
  e.save();
}

export function handleStaked(event: StakedEvent): void {
  const e = new Staked(logId(event));
  withLog(e, event);
  e.realm = event.params.realm;
  e.staker = event.params.staker;
  e.role = event.params.role;
  e.target = event.params.target;
  e.amount = event.params.amount;
  e.staked = event.params.staked;
  e.save();
}

export function handleUnstakeRequested(event: UnstakeRequestedEvent): void {
  const e = new UnstakeRequested(logId(event));
  withLog(e, event);
  e.realm = event.params.realm;
  e.staker = event.params.staker;
  e.role = event.params.role;
  e.target = event.params.target;
  e.amount = event.params.amount;
  e.staked = event.params.staked;
  e.unlockAt = event.params.unlockAt;
  e.save();
}

export function handleStakeWithdrawn(event: StakeWithdrawnEvent): void {
  const e = new StakeWithdrawn(logId(event));
  withLog(e, event);
  e.realm = event.params.realm;
  e.staker = event.params.staker;
  e.role = event.params.role;
  e.target = event.params.target;
  e.amount = event.params.amount;
  e.staked = event.params.staked;
  e.save();
}

export function handleSlashed(event: SlashedEvent): void {
  const e = new Slashed(logId(event));
  withLog(e, event);
  e.realm = event.params.realm;
  e.staker = event.params.staker;
  e.role = event.params.role;
  e.target = event.params.target;
  e.amount = event.params.amount;
  e.staked = event.params.staked;
  e.recipient = event.params.recipient;
  e.save();
}

export function handleDeposited(event: DepositedEvent): void {
  const e = new Deposited(logId(event));
  withLog(e, event);
  e.from = event.params.from;
  e.amount = event.params.amount;
  e.save();
}

export function handleChequeCashed(event: ChequeCashedEvent): void {
  const e = new ChequeCashed(logId(event));
  withLog(e, event);
  e.beneficiary = event.params.beneficiary;
  e.caller = event.params.caller;
  e.cumulativePayout = event.params.cumulativePayout;
  e.paid = event.params.paid;
  e.save();
}

export function handleChequeBounced(event: ChequeBouncedEvent): void {
  const e = new ChequeBounced(logId(event));
  withLog(e, event);
  e.beneficiary = event.params.beneficiary;
  e.cumulativePayout = event.params.cumulativePayout;
  e.due = event.params.due;
  e.paid = event.params.paid;
  e.save();
}

export function handleChequebookWithdrawn(event: ChequebookWithdrawnEvent): void {
  const e = new ChequebookWithdrawn(logId(event));
  withLog(e, event);
  e.to = event.params.to;
  e.amount = event.params.amount;
  e.save();
}

// A chequebook of the factory: stored, and its own logs indexed from this block on (the
// FactoryChequebook template runs the Chequebook handlers above for it).
export function handleChequebookCreated(event: ChequebookCreatedEvent): void {
  const e = new ChequebookCreated(logId(event));
  withLog(e, event);
  e.chequebook = event.params.chequebook;
  e.issuer = event.params.issuer;
  e.token = event.params.token;
  e.save();
  FactoryChequebook.create(event.params.chequebook);
}

export function handleFunded(event: FundedEvent): void {
  const e = new Funded(logId(event));
  withLog(e, event);
  e.realm = event.params.realm;
  e.from = event.params.from;
  e.amount = event.params.amount;
  e.save();
}

export function handleEpochPosted(event: EpochPostedEvent): void {
  const e = new EpochPosted(logId(event));
  withLog(e, event);
  e.realm = event.params.realm;
  e.epoch = event.params.epoch;
  e.root = event.params.root;
  e.total = event.params.total;
  e.save();
}

export function handleBatchPushed(event: BatchPushedEvent): void {
  const e = new BatchPushed(logId(event));
  withLog(e, event);
  e.realm = event.params.realm;
  e.epoch = event.params.epoch;
  e.batchIdx = event.params.batchIdx;
  e.entries = event.params.entries;
  e.amount = event.params.amount;
  e.save();
}

export function handleClaimed(event: ClaimedEvent): void {
  const e = new Claimed(logId(event));
  withLog(e, event);
  e.realm = event.params.realm;
  e.account = event.params.account;
  e.epoch = event.params.epoch;
  e.cumulative = event.params.cumulative;
  e.amount = event.params.amount;
  e.save();
}

export function handleTransfer(event: TransferEvent): void {
  const e = new Transfer(logId(event));
  withLog(e, event);
  e.from = event.params.from;
  e.to = event.params.to;
  e.value = event.params.value;
  e.save();
}
