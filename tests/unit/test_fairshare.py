"""Per-peer budgets of a hub's receive round (max-min fair share)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunconnector.proto.fairshare import FloodJudge, RoundBudget, fair_share


def test_fair_share_water_fills() -> None:
    assert fair_share({"a": 1, "b": 2, "c": 1000}, 100) == 97
    assert fair_share({"a": 50, "b": 50, "c": 50}, 100) == 33
    assert fair_share({"a": 10, "b": 20}, 100) == 20  # within capacity: the largest count
    assert fair_share({}, 100) == 0
    assert fair_share({i: 5 for i in range(1000)}, 100, min_share=2) == 2  # never below


@given(st.dictionaries(st.integers(0, 50), st.integers(1, 500), min_size=2),
       st.integers(1, 1000))
def test_fair_share_is_max_min_fair(counts: dict[int, int], capacity: int) -> None:
    share = fair_share(counts, capacity)
    used = sum(min(n, share) for n in counts.values())
    if sum(counts.values()) <= capacity:
        assert share == max(counts.values())
    else:
        assert used <= capacity or share == 1
        # one more each for those cut would exceed the capacity: the share is maximal
        assert sum(min(n, share + 1) for n in counts.values()) > capacity


def round_of(budget: RoundBudget, senders: list[str]) -> dict[str, int]:
    budget.plan(list(senders))
    kept: dict[str, int] = {}
    for s in senders:
        if budget.admit(s):
            kept[s] = kept.get(s, 0) + 1
    return kept


def test_flooder_loses_its_excess_others_keep_everything() -> None:
    b = RoundBudget(capacity=256, min_share=8)
    senders = ["flood"] * 900 + ["ping"] * 3 + ["tcp"] * 40
    senders = senders[:450] + ["ping", "tcp"] + senders[450:]  # interleaved arrival
    kept = round_of(b, senders)
    assert b.limited
    assert kept["ping"] == 4 and kept["tcp"] == 41
    assert kept["flood"] == 256 - 4 - 41
    # the flooder keeps the first of its datagrams, in order
    b.plan(senders)
    admitted = [i for i, s in enumerate(senders) if b.admit(s) and s == "flood"]
    assert admitted == list(range(kept["flood"]))


def test_no_cut_within_capacity_and_one_sender_cut_at_capacity() -> None:
    b = RoundBudget(capacity=256)
    assert round_of(b, ["a"] * 200 + ["b"] * 56) == {"a": 200, "b": 56}
    assert not b.limited
    assert round_of(b, ["a"] * 2000) == {"a": 256}  # a round's work stays bounded
    assert b.limited


def test_many_senders_each_keep_the_minimum() -> None:
    b = RoundBudget(capacity=64, min_share=8)
    senders = [f"p{i}" for i in range(100) for _ in range(10)]
    kept = round_of(b, senders)
    assert set(kept.values()) == {8}


def test_unknown_sender_in_a_round_is_admitted() -> None:
    b = RoundBudget(capacity=4, min_share=1)
    b.plan(["a"] * 10 + ["b"])
    assert b.admit("c")  # not in the plan: nothing to cut it by


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        RoundBudget(capacity=0)


def feed(judge: FloodJudge, windows: list[tuple[int, int]], t: float = 0.0) -> list[bool]:
    """Feed per-window (read, dropped) counts; the verdict after each window."""
    read = dropped = 0
    judge.sample(t, read, dropped)
    out = []
    for got, lost in windows:
        t += judge.window * 1.01  # a little more: the float sum must reach it
        read, dropped = read + got, dropped + lost
        out.append(judge.sample(t, read, dropped))
    return out


def test_flood_judged_after_windows_in_a_row_and_freed_after_a_clean_one() -> None:
    j = FloodJudge(window=0.1, ratio=0.2, windows=3)
    assert feed(j, [(1000, 5000)] * 4 + [(900, 0), (1000, 5000)]) == [
        False, False, True, True, False, False]


def test_a_burst_of_loss_is_not_a_flood() -> None:
    """TCP's slow start overshoots once, then backs off: lossy windows not in a row."""
    j = FloodJudge(window=0.1, ratio=0.2, windows=3)
    pattern = [(1000, 800), (1000, 10), (1000, 900), (1000, 0), (1000, 700), (1000, 600)]
    assert not any(feed(j, pattern))


def test_loss_below_the_ratio_keeps_the_verdict_either_way() -> None:
    j = FloodJudge(window=0.1, ratio=0.2, windows=2)
    assert feed(j, [(1000, 100)] * 3) == [False] * 3  # 9% lost: a busy sender, not a flood
    assert feed(j, [(100, 1000)] * 2 + [(1000, 50)], t=1.0) == [False, True, True]


def test_samples_inside_a_window_change_nothing() -> None:
    j = FloodJudge(window=0.1, ratio=0.2, windows=1)
    assert j.due(0.0)
    j.sample(0.0, 0, 0)
    assert not j.due(0.05)
    assert not j.sample(0.05, 10, 1000)
    assert j.due(0.1)
    assert j.sample(0.1, 10, 1000)


def test_flood_judge_bad_parameters() -> None:
    for kw in ({"window": 0.0}, {"ratio": 1.0}, {"ratio": 0.0}, {"windows": 0}):
        with pytest.raises(ValueError):
            FloodJudge(**kw)  # type: ignore[arg-type]
