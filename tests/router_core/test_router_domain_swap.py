"""Pure SWAP rules: the account's debt is charges minus accepted cheques, cumulative only grows."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from domain.swap import PeerAccount

ops = st.lists(
    st.one_of(
        st.tuples(st.just("charge"), st.integers(1, 50)),
        st.tuples(st.just("pay"), st.integers(0, 10**6)),
    ),
    max_size=40,
)


@settings(max_examples=100, deadline=None)
@given(ops=ops)
def test_debt_is_charges_minus_accepted_cheques(ops: list[tuple[str, int]]) -> None:
    account = PeerAccount("0xrouter", "realm1", "0xpeer")
    charged = paid = 0
    for op, value in ops:
        if op == "charge":
            account.charge(value, value * 7)
            charged += value * 7
        elif value > account.last_cumulative:
            account.accept_cheque(value, value - account.last_cumulative, "0x")
            paid = value
        else:
            account.reject_cheque(value, "not_increasing")
    assert account.debt == charged - paid
    assert account.last_cumulative == paid
    events = account.collect_events()
    cumulatives = [e.cumulative for e in events if type(e).__name__ == "ChequeAccepted"]
    assert cumulatives == sorted(set(cumulatives))
