"""USD prices for SWAP: the last Chainlink reading per feed, as the indexer judged it
(`PriceObserved` in the log), and the conversion of a USD price per message into token base
units. A realm priced in USD (`RealmParams.usd_price_per_message` > 0, with its `price_feed`)
gets no new SWAP handshake while its feed's last reading is not `valid` or there is none."""

from __future__ import annotations

import threading

from domain.events import PriceObserved
from domain.swap import HandshakeRefused

#: `usd_price_per_message` is in units of 10**-18 USD
USD_DECIMALS = 18


def base_units_per_message(
    usd_per_message: int, answer: int, feed_decimals: int, token_decimals: int
) -> int:
    """Token base units for one message priced `usd_per_message` (10**-18 USD), with the feed
    saying one whole token (10**token_decimals base units) is worth answer / 10**feed_decimals
    USD. Rounded up: the router never charges less than the USD price."""
    if answer <= 0:
        raise ValueError(f"a price must be positive, got {answer}")
    numerator = usd_per_message * 10**feed_decimals * 10**token_decimals
    denominator = answer * 10**USD_DECIMALS
    return -(-numerator // denominator)


class PriceBook:
    """The last `PriceObserved` of each feed (thread-safe: fed by the ledger follower)."""

    def __init__(self) -> None:
        self._last: dict[str, PriceObserved] = {}
        self._lock = threading.Lock()

    def observe(self, event: PriceObserved) -> None:
        key = event.feed.lower()
        with self._lock:
            last = self._last.get(key)
            if last is None or (event.block, event.round_id) >= (last.block, last.round_id):
                self._last[key] = event

    def last(self, feed: str) -> PriceObserved | None:
        with self._lock:
            return self._last.get(feed.lower())

    def price_per_message(self, feed: str, usd_per_message: int, token_decimals: int) -> int:
        """Base units per message at the feed's last valid reading; HandshakeRefused
        ("price_stale") while its last reading is not valid or there is none."""
        seen = self.last(feed)
        if seen is None:
            raise HandshakeRefused(
                "price_stale",
                f"this realm prices SWAP in USD and no price of feed {feed} is known yet: "
                "try again later",
            )
        if seen.status != "valid":
            raise HandshakeRefused(
                "price_stale",
                f"this realm prices SWAP in USD and the last price of feed {feed} is "
                f"{seen.status} (round {seen.round_id}, block {seen.block}): try again later",
            )
        return base_units_per_message(usd_per_message, seen.answer, seen.decimals, token_decimals)
