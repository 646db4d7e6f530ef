"""Health verdict (sans-I/O) and the asyncio monitor with a fake pinger."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tunconnector.config import Config, HealthConfig, TunnelConfig
from tunconnector.errors import ConfigError, LocalProtocolError
from tunconnector.health import HealthMonitor, default_target, write_status_file
from tunconnector.proto.health import HealthCheck, HealthState


def feed(check: HealthCheck, answers: list[bool], now: float = 0.0) -> float:
    for ok in answers:
        now = max(now, check.get_timer())
        seq = check.send_probe(now)
        check.probe_result(seq, 0.01 if ok else None, now + 0.001)
    return now


def drain(check: HealthCheck) -> list[tuple[str, str]]:
    out = []
    while (ev := check.next_event()) is not None:
        out.append((ev.old.value, ev.new.value))
    return out


def test_seed_rule_more_than_half_of_five() -> None:
    c = HealthCheck(interval=10, probes=5, threshold=0.5)
    assert c.needed == 3
    assert c.spacing == 2.0
    feed(c, [True, True])
    assert c.state is HealthState.UNKNOWN  # two answers cannot decide yet
    feed(c, [True])
    assert c.state is HealthState.OK
    assert drain(c) == [("UNKNOWN", "OK")]


def test_exactly_half_is_not_ok() -> None:
    c = HealthCheck(interval=4, probes=4, threshold=0.5)
    feed(c, [True, True, False, False])
    assert c.state is HealthState.NOT_OK


def test_not_ok_decided_early_and_recovers_within_one_interval() -> None:
    c = HealthCheck(interval=10, probes=5, threshold=0.5)
    feed(c, [False, False, False])
    assert c.state is HealthState.NOT_OK
    feed(c, [True] * 5)
    assert c.state is HealthState.OK
    drain(c)
    # far end goes away: NOT_OK after 3 lost probes = 3 * spacing = 6 s < interval
    start = c.get_timer()
    t = feed(c, [False, False, False], now=start)
    assert c.state is HealthState.NOT_OK
    assert t - start < c.interval
    # and back: OK after 3 answers
    feed(c, [True, True, True])
    assert c.state is HealthState.OK
    assert drain(c) == [("OK", "NOT_OK"), ("NOT_OK", "OK")]
    assert c.transitions == 4  # UNKNOWN->NOT_OK->OK->NOT_OK->OK


def test_threshold_zero_means_any_answer() -> None:
    c = HealthCheck(interval=1, probes=3, threshold=0.0)
    feed(c, [False, False, True])
    assert c.state is HealthState.OK
    feed(c, [False, False, False])
    assert c.state is HealthState.NOT_OK


def test_spacing_and_no_burst_after_stall() -> None:
    c = HealthCheck(interval=1, probes=4, threshold=0.5, now=100.0)
    assert c.get_timer() == 100.0
    c.send_probe(100.0)
    assert c.get_timer() == pytest.approx(100.25)
    c.send_probe(105.0)  # loop was blocked for 5 s
    assert c.get_timer() == pytest.approx(105.25)


def test_unknown_and_duplicate_results_ignored() -> None:
    c = HealthCheck(interval=1, probes=2, threshold=0.5)
    seq = c.send_probe(0.0)
    c.probe_result(seq, 0.01, 0.1)
    c.probe_result(seq, 0.01, 0.2)
    c.probe_result(999, 0.01, 0.2)
    assert c.answered_total == 1
    assert len(c.history) == 1


def test_reset_goes_unknown() -> None:
    c = HealthCheck(interval=1, probes=1, threshold=0.5)
    feed(c, [True])
    c.reset(50.0)
    assert c.state is HealthState.UNKNOWN
    assert c.get_timer() == 50.0
    snap = c.snapshot()
    assert snap["state"] == "UNKNOWN" and snap["window"] == 0


def test_snapshot_numbers() -> None:
    c = HealthCheck(interval=5, probes=5, threshold=0.5)
    feed(c, [True, False, True, True])
    s = c.snapshot()
    assert s["window_answered"] == 3 and s["lost"] == 1 and s["sent"] == 4
    assert s["rtt_avg"] == pytest.approx(0.01)


@pytest.mark.parametrize("kw", [{"interval": 0}, {"probes": 0}, {"threshold": 1.0}])
def test_bad_parameters(kw: dict[str, float]) -> None:
    with pytest.raises(LocalProtocolError):
        HealthCheck(**kw)  # type: ignore[arg-type]


def _tcfg(address: str, **health: object) -> TunnelConfig:
    cfg = Config.from_mapping(
        {"tunnel": [{"name": "vpn", "address": address, "health": dict(health)}]}
    )
    return cfg.tunnel[0]


@pytest.mark.parametrize(
    "addr,expect",
    [
        ("10.0.0.1/24", "10.0.0.2"),
        ("10.0.0.2/24", "10.0.0.1"),
        ("10.0.0.7/24", "10.0.0.1"),
        ("10.9.0.0/31", "10.9.0.1"),
        ("10.9.0.2/30", "10.9.0.1"),
        ("fd00::1/64", "fd00::2"),
    ],
)
def test_default_target(addr: str, expect: str) -> None:
    assert default_target(_tcfg(addr)) == expect


def test_default_target_needs_address() -> None:
    cfg = Config.from_mapping({"tunnel": [{"name": "vpn", "health": {}}]})
    with pytest.raises(ConfigError, match="health.target"):
        default_target(cfg.tunnel[0])


def test_health_config_keys() -> None:
    t = _tcfg("10.0.0.1/24", target="10.0.0.3", interval=10, probes=5, threshold=0.5,
              status_file="/tmp/upv_vpn_aveiro_status")
    assert t.health is not None and t.health.target == "10.0.0.3"
    with pytest.raises(ConfigError, match="threshold"):
        _tcfg("10.0.0.1/24", threshold=1.5)


def test_write_status_file_atomic(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "status"
    write_status_file(p, "OK")
    assert p.read_text() == "OK"
    write_status_file(p, "NOT_OK")
    assert p.read_text() == "NOT_OK"
    assert os.listdir(p.parent) == ["status"]  # no temp files left behind


class FakePinger:
    def __init__(self) -> None:
        self.up = True
        self.calls = 0
        self.closed = False

    async def ping(self, addr: str, timeout: float) -> float | None:
        self.calls += 1
        await asyncio.sleep(0)
        return 0.005 if self.up else None

    def close(self) -> None:
        self.closed = True


async def test_monitor_flips_status_file(tmp_path: Path) -> None:
    status = tmp_path / "st"
    fake = FakePinger()
    hc = HealthConfig(interval=0.2, probes=4, threshold=0.5, timeout=0.05,
                      status_file=str(status))
    mon = HealthMonitor("vpn", hc, "10.0.0.2", pinger_factory=lambda: fake)
    seen: list[str] = []
    calls_at: dict[str, int] = {}  # probes sent when the verdict moved
    mon.add_listener(lambda name, ev: seen.append(f"{name}:{ev.new.value}"))
    mon.add_listener(lambda name, ev: calls_at.setdefault(ev.new.value, fake.calls))
    mon.start()
    try:
        await mon.wait_for(HealthState.OK, 2.0)
        assert status.read_text() == "OK"
        # Detection within one interval, counted on the monitor's own schedule (probes
        # sent since the far end went away, ``probes`` of them per interval), not on the
        # wall clock: a loaded machine stalls the loop, not the count.
        calls_at_cut = fake.calls
        fake.up = False
        await mon.wait_for(HealthState.NOT_OK, 2.0 + 20 * hc.interval)
        probes_to_detect = calls_at["NOT_OK"] - calls_at_cut
        assert probes_to_detect * mon.check.spacing <= hc.interval, probes_to_detect
        assert status.read_text() == "NOT_OK"
        fake.up = True
        await mon.wait_for(HealthState.OK, 2.0)
        assert status.read_text() == "OK"
        snap = mon.snapshot()
        assert snap["state"] == "OK" and snap["target"] == "10.0.0.2"
    finally:
        await mon.stop()
    assert fake.closed
    assert status.read_text() == "NOT_OK"  # daemon gone: nobody vouches for the link
    assert seen == ["vpn:OK", "vpn:NOT_OK", "vpn:OK"]


async def test_monitor_survives_pinger_errors(tmp_path: Path) -> None:
    def broken() -> FakePinger:
        raise OSError(1, "Operation not permitted")

    hc = HealthConfig(interval=0.1, probes=2, threshold=0.5, timeout=0.05,
                      status_file=str(tmp_path / "st"))
    mon = HealthMonitor("vpn", hc, "10.0.0.2", pinger_factory=broken)
    mon.start()
    try:
        await mon.wait_for(HealthState.NOT_OK, 2.0)
        assert "not permitted" in (mon.snapshot()["error"] or "")
    finally:
        await mon.stop()


def test_late_timeout_of_an_older_probe_does_not_flap_the_verdict() -> None:
    """Probes overlap when timeout > spacing: probes sent while the link was down time out
    after newer probes were already answered. The verdict is over the last N probes *sent*,
    so those late losses must not undo the recovery."""
    c = HealthCheck(interval=1, probes=4, threshold=0.5)  # spacing 0.25 s
    t = 0.0
    for _ in range(4):  # link down: four probes lost
        c.probe_result(c.send_probe(t), None, t + 0.3)
        t += 0.25
    pending = [(c.send_probe(t), t), (c.send_probe(t + 0.25), t + 0.25)]  # still in flight
    t += 0.5
    for _ in range(3):  # link up: the next three answered at once
        c.probe_result(c.send_probe(t), 0.001, t + 0.001)
        t += 0.25
    assert c.state is HealthState.OK
    drain(c)
    for seq, sent in pending:  # their timeouts arrive late (a stalled loop)
        c.probe_result(seq, None, sent + 2.0)
    assert c.state is HealthState.OK, c.snapshot()
    assert drain(c) == []
    assert c.lost_total == 6


def test_results_older_than_the_window_are_counted_but_not_judged() -> None:
    c = HealthCheck(interval=1, probes=2, threshold=0.0)
    old = c.send_probe(0.0)
    for i in range(1, 4):
        c.probe_result(c.send_probe(i * 0.5), 0.001, i * 0.5)
    assert c.state is HealthState.OK
    c.probe_result(old, None, 5.0)  # older than every probe in the window
    assert c.state is HealthState.OK
    assert c.lost_total == 1 and c.snapshot()["window_answered"] == 2
