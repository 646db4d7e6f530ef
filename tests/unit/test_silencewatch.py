"""The bond's silence watch: leave a path that alone went quiet, never move on a stall."""

from __future__ import annotations

import pytest

from tunconnector.proto.silencewatch import SilenceWatch

TAPS = ["tap1", "tap2"]


def watch(**kw: object) -> SilenceWatch:
    return SilenceWatch(switch_after=0.15, primary="tap1", failback=True, **kw)  # type: ignore[arg-type]


def test_quiet_active_with_a_fresh_backup_moves() -> None:
    w = watch()
    assert w.decide(0.0, "tap1", {"tap1": 0.01, "tap2": 0.03}, TAPS) is None
    assert w.decide(0.1, "tap1", {"tap1": 0.14, "tap2": 0.02}, TAPS) is None  # not yet
    assert w.decide(0.2, "tap1", {"tap1": 0.15, "tap2": 0.04}, TAPS) == "tap2"
    assert w.moves == 1


def test_everything_quiet_is_a_stall_and_moves_nothing() -> None:
    w = watch()
    assert w.decide(1.0, "tap1", {"tap1": 0.3, "tap2": 0.25}, TAPS) is None
    assert w.decide(1.0, "tap1", {"tap1": 0.3}, TAPS) is None  # backup never heard
    assert w.moves == 0


def test_unusable_backup_is_not_a_target() -> None:
    w = watch()
    assert w.decide(1.0, "tap1", {"tap1": 0.3, "tap2": 0.01}, ["tap1"]) is None


def test_primary_preferred_among_fresh_and_else_freshest() -> None:
    w = SilenceWatch(switch_after=0.15, primary="tap2")
    s = {"tap1": 0.5, "tap2": 0.05, "tap3": 0.01}
    assert w.decide(1.0, "tap1", s, ["tap1", "tap2", "tap3"]) == "tap2"
    w = SilenceWatch(switch_after=0.15)
    assert w.decide(1.0, "tap1", s, ["tap1", "tap2", "tap3"]) == "tap3"


def test_failback_after_hold_and_only_when_the_kernel_agrees() -> None:
    w = watch()
    assert w.decide(0.0, "tap2", {"tap1": 0.5, "tap2": 0.01}, TAPS) is None
    assert w.decide(1.0, "tap2", {"tap1": 0.02, "tap2": 0.01}, TAPS) is None  # fresh now
    assert w.decide(1.2, "tap2", {"tap1": 0.02, "tap2": 0.01}, TAPS) is None  # < hold 0.3
    assert w.decide(1.3, "tap2", {"tap1": 0.02, "tap2": 0.01}, TAPS,
                    primary_kernel_up=False) is None
    assert w.decide(1.31, "tap2", {"tap1": 0.02, "tap2": 0.01}, TAPS) == "tap1"


def test_a_gap_restarts_the_failback_hold() -> None:
    w = watch()
    w.decide(1.0, "tap2", {"tap1": 0.02, "tap2": 0.01}, TAPS)
    w.decide(1.2, "tap2", {"tap1": 0.2, "tap2": 0.01}, TAPS)  # quiet again
    assert w.decide(1.35, "tap2", {"tap1": 0.02, "tap2": 0.01}, TAPS) is None
    assert w.decide(1.66, "tap2", {"tap1": 0.02, "tap2": 0.01}, TAPS) == "tap1"


def test_no_failback_without_reselect_always() -> None:
    w = SilenceWatch(switch_after=0.15, primary="tap1", failback=False)
    w.decide(1.0, "tap2", {"tap1": 0.02, "tap2": 0.01}, TAPS)
    assert w.decide(9.0, "tap2", {"tap1": 0.02, "tap2": 0.01}, TAPS) is None


def test_bad_threshold_refused() -> None:
    with pytest.raises(ValueError):
        SilenceWatch(switch_after=0)


def test_a_bond_left_without_active_slave_gets_a_fresh_one_at_a_bounded_rate() -> None:
    """The ARP monitor dropped the active slave (this process was stalled meanwhile) and
    chose none: the watch names a fresh usable slave, the primary first, at most once per
    switch_after (the kernel refuses a slave its monitor does not count up yet)."""
    w = SilenceWatch(switch_after=0.15, primary="tap1")
    fresh = {"tap1": 0.02, "tap2": 0.01}
    assert w.decide(10.0, None, fresh, ["tap1", "tap2"]) == "tap1"
    assert w.decide(10.05, None, fresh, ["tap1", "tap2"]) is None  # too soon to retry
    assert w.decide(10.2, None, {"tap1": 0.5, "tap2": 0.01}, ["tap2"]) == "tap2"
    assert w.decide(10.4, None, {"tap1": 0.5, "tap2": 0.5}, ["tap1", "tap2"]) is None
