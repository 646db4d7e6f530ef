"""Userspace multi-path between two namespaces joined by two veth pairs.

A 1 kpps UDP stream with sequence numbers runs through the tunnel in both directions
while the active path is cut (``ip link set down``, then separately an nftables drop);
lost sequence numbers = milliseconds of loss. Results (median/max over TRIALS trials: 7
here, docs/multipath.md's table was taken with 10) are printed and written to
``$TUNCONNECTOR_MP_RESULTS`` when set (docs/multipath.md).
"""

from __future__ import annotations

import array
import json
import os
import secrets
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from harness import PY, Daemon, Env
from netns import Host, tunconnector_cmd, wait_for

from tunconnector.status import query_all

pytestmark = [pytest.mark.privileged, pytest.mark.netns]

TUN_A, TUN_B = "10.91.0.1", "10.91.0.2"
PORT = 55560
RATE = 1000  # packets per second: one lost packet = 1 ms
STREAM_PORT = 9100
TRIALS = 7
DETECT_GOAL_MS = 50  # a dead path declared within 50 ms (docs/multipath.md)

STREAM = r'''
import array, os, socket, struct, sys, time
mode = sys.argv[1]
if mode == "recv":
    bind, port, out = sys.argv[2], int(sys.argv[3]), sys.argv[4]
    # progress for the test to wait on: "<packets received> <highest seq>", rewritten
    # in place every 20 packets (fixed width)
    prog = os.open(out + ".progress", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    count, top = 0, -1
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((bind, port))
    s.settimeout(120)
    print("ready", flush=True)
    got = bytearray(1 << 20)
    sent_at = array.array("d", bytes(8 << 20))  # sender's clock, per received seq
    dups = 0
    try:
        while True:
            data = s.recv(2048)
            if data[:3] == b"END":
                break
            seq, ts = struct.unpack_from("!Qd", data)
            if seq < len(got):
                dups += got[seq]
                got[seq] = 1
                sent_at[seq] = ts
                count += 1
                top = max(top, seq)
                if count % 20 == 0:
                    os.pwrite(prog, b"%20d %20d\n" % (count, top), 0)
    except socket.timeout:
        pass
    with open(out, "wb") as f:
        f.write(got)
    with open(out + ".ts", "wb") as f:
        sent_at.tofile(f)
    print("dups", dups, flush=True)
else:
    dst, port, rate, stop = sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((dst, port))
    pad = b"\0" * 48
    t0m = time.monotonic()
    print(repr(time.time()), flush=True)
    seq = 0
    while True:
        if seq % 200 == 0 and os.path.exists(stop):
            break
        target = t0m + seq / rate
        d = target - time.monotonic()
        if d > 0:
            time.sleep(d)
        try:
            s.send(struct.pack("!Qd", seq, time.time()) + pad)
        except OSError:
            pass
        seq += 1
    print(seq, flush=True)
    for _ in range(30):
        try:
            s.send(b"END")
        except OSError:
            pass
        time.sleep(0.01)
'''


# ------------------------------------------------------------------ lab helpers
def mp_pair(env: Env, policy: str, **extra: Any) -> tuple[Daemon, Daemon]:
    """Server in A, client in B, one path per veth pair (path 0 preferred)."""
    lab = env.lab
    common: dict[str, Any] = {
        "policy": policy, "probe_interval": 0.02, "down_after": 3, "up_after": 3,
        "failback_delay": 0.5, "keepalive": 1, "dead_after": 4, **extra,
    }
    srv_paths = "".join(
        f'[[tunnel.path]]\nname = "p{i}"\nlocal = "{lab.a_addrs[i]}"\nport = {PORT}\n'
        f'bind_interface = "{lab.links[i][0]}"\npriority = {10 * (2 - i)}\n'
        for i in range(2)
    )
    cli_paths = "".join(
        f'[[tunnel.path]]\nname = "p{i}"\nlocal = "{lab.b_addrs[i]}"\n'
        f'bind_interface = "{lab.links[i][1]}"\nremote = "{lab.a_addrs[i]}"\n'
        f'remote_port = {PORT}\npriority = {10 * (2 - i)}\n'
        for i in range(2)
    )
    server = env.config_daemon(env.a, [{
        "name": "mp", "mode": "server", "device": f"mp{lab.tag}", "port": PORT,
        "address": [f"{TUN_A}/24"], **common}], "mp-server", extra=srv_paths)
    client = env.config_daemon(env.b, [{
        "name": "mp", "mode": "client", "device": f"mp{lab.tag}",
        "address": [f"{TUN_B}/24"], **common}], "mp-client", extra=cli_paths)
    return server, client


def mp_status(d: Daemon) -> dict[str, Any]:
    for r in query_all(str(d.ctl), timeout=2.0):
        for t in r.get("tunnels", []):
            if t.get("name") == "mp":
                return t
    return {}


def multipath(d: Daemon) -> dict[str, Any]:
    return mp_status(d).get("multipath") or {}


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_active(daemons: list[Daemon], path: str, timeout: float = 10.0) -> None:
    wait_until(lambda: all(multipath(d).get("active_path") == path for d in daemons),
               timeout, f"active path {path}")


def wait_all_up(daemons: list[Daemon], timeout: float = 15.0) -> None:
    def ok() -> bool:
        for d in daemons:
            ps = multipath(d).get("paths") or []
            if len(ps) != 2 or any(p["state"] != "up" for p in ps):
                return False
        return True

    wait_until(ok, timeout, "both paths up on both ends")


class Nft:
    """An nftables table in namespace A filtering one veth (random suffix, removed after)."""

    def __init__(self, host: Host, tag: str) -> None:
        self.host = host
        self.table = f"mp{tag}"
        host.run("nft", "-f", "-", input=(
            f"table inet {self.table} {{\n"
            "  chain in { type filter hook input priority -10; policy accept; }\n"
            "  chain out { type filter hook output priority -10; policy accept; }\n"
            "}\n"))

    def drop(self, ifname: str, percent: int | None = None) -> None:
        rnd = f"numgen random mod 100 < {percent} " if percent is not None else ""
        self.host.run("nft", "-f", "-", input=(
            f"add rule inet {self.table} in iifname {ifname} {rnd}drop\n"
            f"add rule inet {self.table} out oifname {ifname} {rnd}drop\n"))

    def clear(self) -> None:
        self.host.run("nft", "-f", "-", input=(
            f"flush chain inet {self.table} in\nflush chain inet {self.table} out\n"))

    def remove(self) -> None:
        self.host.run("nft", "delete", "table", "inet", self.table, check=False)


@pytest.fixture
def nft(env2: Env) -> Iterator[Nft]:
    if not env2.a.run("nft", "list", "tables", check=False).returncode == 0:
        pytest.skip("needs nftables (nft)")
    n = Nft(env2.a, env2.lab.tag)
    try:
        yield n
    finally:
        n.remove()


@dataclass
class Stream:
    """1 kpps sequence-numbered UDP from ``src`` to ``dst_ip`` through the tunnel."""

    src: Host
    dst: Host
    dst_ip: str
    workdir: Path
    name: str
    t0: float = 0.0
    sent: int = 0
    got: bytes = b""
    dups: int = -1  # copies the receiver got of a sequence number it already had
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> Stream:
        script = self.workdir / "stream.py"
        script.write_text(STREAM)
        run = secrets.token_hex(3)
        self.stop_file = self.workdir / f"stop-{self.name}-{run}"
        self.out = self.workdir / f"got-{self.name}-{run}"
        recv = self.dst.popen(PY, str(script), "recv", self.dst_ip, str(STREAM_PORT),
                              str(self.out), stdout=subprocess.PIPE)
        assert recv.stdout is not None
        assert recv.stdout.readline().strip() == b"ready"
        send = self.src.popen(PY, str(script), "send", self.dst_ip, str(STREAM_PORT),
                              str(RATE), str(self.stop_file), stdout=subprocess.PIPE)
        assert send.stdout is not None
        self.t0 = float(send.stdout.readline())
        self.procs = [recv, send]
        return self

    def finish(self) -> None:
        self.stop_file.touch()
        recv, send = self.procs
        send.wait(20)
        assert send.stdout is not None and recv.stdout is not None
        self.sent = int(send.stdout.read().split()[-1])  # buffered: not communicate()
        recv.wait(30)
        out = recv.stdout.read().split()
        assert out[-2:-1] == [b"dups"], out
        self.dups = int(out[-1])
        self.got = self.out.read_bytes()
        self.ts = array.array("d")
        self.ts.frombytes(Path(str(self.out) + ".ts").read_bytes())

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)

    def progress(self) -> tuple[int, int]:
        """(packets received so far, highest sequence number received), -1 for none."""
        try:
            count, top = Path(str(self.out) + ".progress").read_text().split()
            return int(count), int(top)
        except (OSError, ValueError):
            return 0, -1

    def wait_received_after(self, t: float, packets: int = 100, timeout: float = 10.0) -> None:
        """Until the receiver has a packet sent ``packets`` ms of stream after ``t`` (sender
        time): the stream flows again after whatever happened at ``t``."""
        want = self.seq_at(t) + packets
        assert wait_for(lambda: self.progress()[1] >= want, timeout=timeout), (
            f"{self.name}: no packet {want} within {timeout}s: {self.progress()}")

    def seq_at(self, t: float) -> int:
        return max(0, int((t - self.t0) * RATE))

    def lost(self, t_from: float, t_to: float) -> int:
        lo, hi = self.seq_at(t_from), min(self.seq_at(t_to), self.sent)
        return sum(1 for s in range(lo, hi) if not self.got[s])

    def outage_ms(self, t_from: float, t_to: float) -> float:
        """Stream time lost, on the sender's clock: for each run of lost packets, the
        gap between the packets received on either side (minus one interval). Robust
        to a sender that fell behind and caught up in a burst."""
        lo, hi = self.seq_at(t_from), min(self.seq_at(t_to), self.sent)
        total = 0.0
        s = lo
        while s < hi:
            if self.got[s]:
                s += 1
                continue
            e = s
            while e < hi and not self.got[e]:
                e += 1
            before = s - 1 if s > 0 and self.got[s - 1] else None
            after = e if e < self.sent and self.got[e] else None
            if before is not None and after is not None:
                total += (self.ts[after] - self.ts[before]) * 1000 - 1000 / RATE
            else:
                total += (e - s) * 1000 / RATE
            s = e
        return round(total, 1)

    def delivered_ratio(self) -> float:
        return sum(self.got[: self.sent]) / max(self.sent, 1)


@contextmanager
def streams(env: Env) -> Iterator[tuple[Stream, Stream]]:
    """Both directions at once: client B -> server A and A -> B."""
    up = Stream(env.b, env.a, TUN_A, env.workdir, "b2a")
    down = Stream(env.a, env.b, TUN_B, env.workdir, "a2b")
    try:
        up.start()
        down.start()
        yield up, down
    finally:
        for s in (up, down):
            s.kill()


def summary(values: list[float]) -> dict[str, float]:
    return {"median": float(statistics.median(values)), "max": float(max(values)),
            "min": float(min(values)), "trials": len(values)}


def record(key: str, value: Any) -> None:
    print(f"MULTIPATH {key}: {json.dumps(value)}")
    path = os.environ.get("TUNCONNECTOR_MP_RESULTS")
    if path:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            data = {}
        data[key] = value
        Path(path).write_text(json.dumps(data, indent=2, sort_keys=True))


def run_trials(env: Env, server: Daemon, client: Daemon, cut: Callable[[], None],
               restore: Callable[[], None], hold: float = 0.6) -> dict[str, Any]:
    """TRIALS x (cut path 0, hold, restore, wait for failback); loss per trial in ms."""
    daemons = [server, client]
    cut_loss: dict[str, list[float]] = {"b2a": [], "a2b": []}
    cut_pkts: dict[str, list[int]] = {"b2a": [], "a2b": []}
    back_loss: dict[str, list[float]] = {"b2a": [], "a2b": []}
    back_pkts: dict[str, list[int]] = {"b2a": [], "a2b": []}
    cmd_ms: list[float] = []
    failback_after_up: list[float] = []
    marks: list[tuple[float, float, float]] = []
    detect: dict[str, list[float | None]] = {"client": [], "server": []}
    detect_after_cmd: dict[str, list[float | None]] = {"client": [], "server": []}
    failovers_before = {"client": multipath(client)["failovers"],
                        "server": multipath(server)["failovers"]}
    with streams(env) as (up, down):
        for s in (up, down):  # the stream flows both ways: a baseline before the first cut
            s.wait_received_after(s.t0, packets=300)
        for _ in range(TRIALS):
            t_cut = time.time()
            cut()
            t_cut_done = time.time()
            cmd_ms.append(round((t_cut_done - t_cut) * 1000, 1))
            wait_active(daemons, "p1", timeout=5)
            time.sleep(hold)  # keep the path cut: experiment timeline, not synchronisation
            t_restore = time.time()
            restore()
            wait_active(daemons, "p0", timeout=10)
            t_back = time.time()
            for s in (up, down):  # the stream runs on past the failback before the next cut
                s.wait_received_after(t_back, packets=300)
            marks.append((t_cut, t_restore, t_back))
            for side, d in (("client", client), ("server", server)):
                downs = [e["time"] for e in multipath(d).get("events", [])
                         if e.get("event") == "path_down" and e.get("path") == "p0"
                         and e["time"] >= t_cut]
                detect[side].append(round((downs[0] - t_cut) * 1000, 1) if downs else None)
                # the cut takes effect somewhere inside its command (which a loaded box
                # can stretch to 0.5 s): timed from the command's end, early is 0
                detect_after_cmd[side].append(
                    round(max(0.0, downs[0] - t_cut_done) * 1000, 1) if downs else None)
            ev = multipath(client).get("events", [])
            fbs = [e for e in ev if e.get("event") == "active_path"
                   and e.get("reason") == "failback" and e["time"] >= t_restore]
            ups = [e for e in ev if e.get("event") == "path_up" and e.get("path") == "p0"
                   and fbs and t_restore <= e["time"] <= fbs[-1]["time"]]
            if ups and fbs:
                failback_after_up.append(fbs[-1]["time"] - ups[-1]["time"])
        up.finish()
        down.finish()
    # the last failback window runs to the stream's end (its last packet, however late)
    ends = [m[0] for m in marks[1:]] + [time.time() + 3600]
    for (t_cut, t_restore, _), t_end in zip(marks, ends, strict=True):
        for s in (up, down):
            cut_loss[s.name].append(s.outage_ms(t_cut - 0.05, t_restore))
            cut_pkts[s.name].append(s.lost(t_cut - 0.05, t_restore))
            back_loss[s.name].append(s.outage_ms(t_restore, t_end - 0.05))
            back_pkts[s.name].append(s.lost(t_restore, t_end - 0.05))
    cs, ss = multipath(client), multipath(server)
    return {
        "cut_loss_ms": {k: summary(v) for k, v in cut_loss.items()},
        "cut_loss_raw": cut_loss,
        "cut_lost_packets_raw": cut_pkts,
        "cut_command_ms": cmd_ms,
        "failback_loss_ms": {k: summary(v) for k, v in back_loss.items()},
        "failback_after_path_up_s": failback_after_up,
        "detect_ms": detect,
        "detect_after_cut_command_ms": detect_after_cmd,
        # this run's own failovers (the counters are cumulative over the daemons' life)
        "failovers": {"client": cs["failovers"] - failovers_before["client"],
                      "server": ss["failovers"] - failovers_before["server"]},
        "delivered": {s.name: round(s.delivered_ratio(), 6) for s in (up, down)},
        # packets lost outside the cut and failback windows measured above
        "lost_elsewhere": {s.name: s.sent - sum(s.got[: s.sent]) - sum(cut_pkts[s.name])
                           - sum(back_pkts[s.name]) for s in (up, down)},
        "sent": {s.name: s.sent for s in (up, down)},
        "duplicates": {s.name: s.dups for s in (up, down)},
    }


# ------------------------------------------------------------------ tests
def test_paths_come_up_and_status_shows_them(env2: Env) -> None:
    server, client = mp_pair(env2, "active-backup")
    client.wait_state("up")
    wait_all_up([server, client])
    wait_active([server, client], "p0")
    assert env2.b.ping(TUN_A, count=5, interval=0.05) == (5, 5)
    st = mp_status(client)
    mp = st["multipath"]
    assert mp["policy"] == "active-backup" and mp["active_path"] == "p0"
    assert st["paths"] == mp["paths"] and st["failovers"] == 0
    p0, p1 = mp["paths"]
    assert p0["active"] and not p1["active"]
    assert p0["rtt"] is not None and p0["rtt"] < 0.05
    assert p0["remote"].startswith(env2.lab.a_addrs[0])
    srv = multipath(server)
    assert [p["remote"].split(":")[0] for p in srv["paths"]] == env2.lab.b_addrs
    out = subprocess.run(tunconnector_cmd("status", "--control-dir", str(client.ctl)),
                         capture_output=True, text=True, timeout=20).stdout
    assert "*path p0" in out and " path p1" in out, out


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["active-backup", "duplicate"])
def test_cut_active_path(env2: Env, nft: Nft, policy: str) -> None:
    server, client = mp_pair(env2, policy)
    client.wait_state("up")
    wait_all_up([server, client])
    wait_active([server, client], "p0")
    lab = env2.lab
    results = {
        "link_down": run_trials(env2, server, client,
                                lambda: lab.link_down(0), lambda: lab.link_up(0)),
        "nft_drop": run_trials(env2, server, client,
                               lambda: nft.drop(lab.links[0][0]), nft.clear),
    }
    record(f"cut/{policy}", results)
    # A box shared by many test runs (load > 3 per core, CPU quota throttling) stalls the
    # daemons for 100-300 ms now and then; those trials are reported in the docs as
    # measured, and the bounds below leave room for one or two of them.
    for how, r in results.items():
        for direction in ("b2a", "a2b"):
            cut = r["cut_loss_raw"][direction]
            back = r["failback_loss_ms"][direction]
            if policy == "duplicate":
                assert sum(x == 0 for x in cut) >= TRIALS - 2 and max(cut) <= 30, (how, r)
                assert back["median"] == 0 and back["max"] <= 30, (how, r)
            else:
                assert statistics.median(cut) <= 100 and max(cut) <= 400, (how, r)
            # every copy a path delivered beyond the first is dropped on the way
            assert r["duplicates"][direction] == 0, (how, direction, r["duplicates"])
            # nothing is lost but in the windows bounded above (the stream's warm-up is
            # the rest): with those bounds, this bounds the delivered ratio
            assert r["lost_elsewhere"][direction] == 0, (how, direction, r)
            assert r["delivered"][direction] < 1 or sum(cut) == 0, (how, direction, r)
        # probes every 20 ms, down_after 3: a dead path is declared 30-50 ms after it died
        # (docs/multipath.md); the median over the trials, from the cut command's end, gets
        # half as much again for the load; every trial saw its path go down on both ends
        for side in ("client", "server"):
            det = [x for x in r["detect_after_cut_command_ms"][side] if x is not None]
            assert len(det) == TRIALS, (how, side, r["detect_ms"])
            assert statistics.median(det) <= 1.5 * DETECT_GOAL_MS, (how, side, det)
        # failback waits failback_delay (0.5 s) after the path is back, then follows at once
        # (a stall of the daemon in between may delay one or two trials)
        fb = r["failback_after_path_up_s"]
        assert len(fb) >= TRIALS - 2, (how, fb)
        assert min(fb) >= 0.45 and statistics.median(fb) <= 0.6 and max(fb) <= 1.0, (how, fb)
        # this cut's own failovers: a stall may add a flap, or turn one failover into
        # all-down + recovered
        assert min(r["failovers"].values()) >= TRIALS - 2, (how, r["failovers"])


def tun_rx_bytes(env: Env) -> int:
    """Bytes the daemon in A has written into its TUN device: B -> A through the tunnel."""
    dev = f"mp{env.lab.tag}"
    return int(env.a.run("cat", f"/sys/class/net/{dev}/statistics/rx_bytes").stdout)


class CutDuringTraffic(threading.Thread):
    """Cut path 0 once ``start_after`` bytes of the flow went through the tunnel (not at a
    fixed time after the thread started: the sender's start-up is not the flow), hold
    ``hold`` s, restore; then note whether the flow carried on (``after`` bytes)."""

    def __init__(self, env: Env, start_after: int, hold: float, after: int) -> None:
        super().__init__(daemon=True)
        self.env, self.start_after, self.hold, self.after = env, start_after, hold, after
        self.base = tun_rx_bytes(env)
        self.marks: dict[str, float] = {}
        self.error: str | None = None

    def run(self) -> None:
        env = self.env
        if not wait_for(lambda: tun_rx_bytes(env) - self.base >= self.start_after,
                        timeout=60, interval=0.02):
            self.error = f"the flow never carried {self.start_after} bytes"
            return
        self.marks["cut"] = time.time()
        env.lab.link_down(0)
        time.sleep(self.hold)  # the fault's length: experiment timeline
        env.lab.link_up(0)
        self.marks["restored"] = time.time()
        at_restore = tun_rx_bytes(env)
        if wait_for(lambda: tun_rx_bytes(env) - at_restore >= self.after,
                    timeout=60, interval=0.02):
            self.marks["resumed"] = time.time()


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["active-backup", "duplicate"])
def test_tcp_across_cut_and_restore(env2: Env, policy: str) -> None:
    server, client = mp_pair(env2, policy)
    client.wait_state("up")
    wait_all_up([server, client])

    # iperf3 (5 s): cut once the flow is going, restore 1.5 s later; the flow must carry
    # on after the restore (no reset) before iperf3 ends
    srv = env2.a.popen("iperf3", "-s", "-1", "-B", TUN_A, "-p", "5299",
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: env2.a.run("ss", "-ltn", check=False).stdout.count(":5299") > 0,
                   5, "iperf3 server")
        fault = CutDuringTraffic(env2, start_after=1 << 20, hold=1.5, after=1 << 20)
        fault.start()
        res = env2.b.run("iperf3", "-c", TUN_A, "-p", "5299", "-t", "5", "-b", "50M", "-J",
                         check=False, timeout=60)
        t_end = time.time()
        fault.join(70)
        rep = json.loads(res.stdout)
        assert res.returncode == 0 and "error" not in rep, res.stdout[-2000:]
        assert fault.error is None, fault.error
        assert fault.marks.get("resumed", t_end + 1) <= t_end, (
            "the flow did not carry on after the restore before iperf3 ended", fault.marks,
            t_end)
        secs = [iv["sum"]["bits_per_second"] / 1e6 for iv in rep["intervals"]]
        record(f"iperf3/{policy}", {
            "mbit_per_interval": [round(x, 1) for x in secs],
            "retransmits": rep["end"]["sum_sent"].get("retransmits"),
            "received_mbit": round(rep["end"]["sum_received"]["bits_per_second"] / 1e6, 1),
        })
    finally:
        if srv.poll() is None:
            srv.kill()
        srv.wait(5)
    wait_active([server, client], "p0", timeout=10)
    # bulk transfer with a digest at both ends across another cut (once 1 MB went
    # through) and restore; the transfer must still be moving after the restore. The
    # cut and hold take about 0.55 s; 96 MB took 0.84-1.4 s on a slow 2-core host and
    # half that on a fast one, where it could end before the restore: 255 MB (the most
    # xfer's one-call payload makes) keeps the restore inside the transfer on a machine
    # three times as fast (2-4 s here)
    nbytes = 255 << 20
    fault = CutDuringTraffic(env2, start_after=1 << 20, hold=0.5, after=1 << 20)
    fault.start()
    want, have, took = env2.transfer(env2.b, env2.a, TUN_A, nbytes=nbytes, port=5298)
    t_end = time.time()
    fault.join(70)
    assert want == have
    assert fault.error is None, fault.error
    assert fault.marks.get("resumed", t_end + 1) <= t_end, (
        "the transfer did not carry on after the restore", fault.marks, t_end)
    record(f"sha256/{policy}", {"bytes": nbytes, "seconds": took, "digest_match": True,
                                "marks": fault.marks, "ended": t_end})


@pytest.mark.slow
def test_duplicate_mode_random_loss(env2: Env, nft: Nft) -> None:
    server, client = mp_pair(env2, "duplicate")
    client.wait_state("up")
    wait_all_up([server, client])
    nft.drop(env2.lab.links[0][0], percent=5)
    with streams(env2) as (up, down):
        time.sleep(10)  # 10 000 packets each way: the measurement itself
        up.finish()
        down.finish()
    ratios = {s.name: s.delivered_ratio() for s in (up, down)}
    dups = {s.name: s.dups for s in (up, down)}
    record("random_loss/duplicate", {"loss_percent_path0": 5, "delivered": ratios,
                                     "sent": {s.name: s.sent for s in (up, down)},
                                     "duplicates": dups})
    assert all(r >= 0.999 for r in ratios.values()), ratios
    assert dups == {"b2a": 0, "a2b": 0}, dups  # each packet once, though sent on both paths


@pytest.mark.slow
def test_active_backup_leaves_lossy_path(env2: Env, nft: Nft) -> None:
    server, client = mp_pair(env2, "active-backup", loss_threshold=0.02)
    client.wait_state("up")
    wait_all_up([server, client])
    wait_active([server, client], "p0")
    failbacks = {d.name: multipath(d)["failbacks"] for d in (server, client)}
    t = time.time()
    nft.drop(env2.lab.links[0][0], percent=5)
    wait_active([server, client], "p1", timeout=20)
    took = time.time() - t
    time.sleep(2.0)  # observation window (4 x failback_delay): it must not come back
    observed: dict[str, float] = {}
    for d in (server, client):
        mp = multipath(d)
        assert mp["active_path"] == "p1" and mp["failbacks"] == failbacks[d.name], (
            d.name, [(round(e["time"] - t, 3), e["event"], e.get("path") or e.get("new"),
                      e.get("reason")) for e in mp["events"]],
            [{k: q[k] for k in ("name", "state", "degraded", "loss", "probes_sent",
                                "probes_missed", "probes_late", "rtt", "rttvar")}
             for q in mp["paths"]])
        ev = [e for e in mp["events"] if e.get("event") == "active_path"]
        assert ev[-1]["reason"] in ("loss", "failover"), ev
        p0 = mp["paths"][0]
        assert p0["degraded"] or p0["state"] == "down", (p0, ev)
        observed[d.name] = p0["loss"]
    record("loss_threshold/active-backup", {"loss_percent": 5, "threshold": 0.02,
                                            "seconds_to_move": round(took, 2),
                                            "observed_probe_loss": observed})
    # the path stays avoided while lossy; back after the loss stops and failback_delay
    nft.clear()
    wait_active([server, client], "p0", timeout=30)


def test_encrypted_duplicate_mode(env2: Env) -> None:
    """One encrypted session over both paths: the replay window drops the copies."""
    from tunconnector.keys import generate_psk

    key = env2.workdir / "mp.key"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, (generate_psk() + "\n").encode())
    os.close(fd)
    server, client = mp_pair(env2, "duplicate", key_file=str(key))
    client.wait_state("up")
    wait_all_up([server, client])
    lab = env2.lab
    with streams(env2) as (up, down):
        for s in (up, down):  # a steady stream both ways (500 ms of it) before the cut
            s.wait_received_after(s.t0, packets=500)
        lab.link_down(0)
        time.sleep(0.5)  # the cut's length: experiment timeline
        lab.link_up(0)
        wait_all_up([server, client])
        t_up = time.time()
        for s in (up, down):  # and 500 ms of stream over both paths again
            s.wait_received_after(t_up, packets=500)
        up.finish()
        down.finish()
    ratios = {s.name: s.delivered_ratio() for s in (up, down)}
    dups = {s.name: s.dups for s in (up, down)}
    st = mp_status(client)
    assert st["encrypted"] is True and st["crypto"]["established"] is True, st
    record("encrypted/duplicate", {"delivered": ratios, "drops": st["drops"],
                                   "duplicates": dups})
    assert all(r == 1.0 for r in ratios.values()), ratios
    assert dups == {"b2a": 0, "a2b": 0}, dups  # the replay window dropped every copy


def iperf3_tcp(env: Env, seconds: int = 5, streams: int = 1) -> dict[str, Any]:
    srv = env.a.popen("iperf3", "-s", "-1", "-B", TUN_A, "-p", "5297",
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: env.a.run("ss", "-ltn", check=False).stdout.count(":5297") > 0,
                   5, "iperf3 server")
        res = env.b.run("iperf3", "-c", TUN_A, "-p", "5297", "-t", str(seconds),
                        "-P", str(streams), "-J", check=False, timeout=60)
        rep = json.loads(res.stdout)
        assert res.returncode == 0 and "error" not in rep, res.stdout[-2000:]
        return {"mbit": round(rep["end"]["sum_received"]["bits_per_second"] / 1e6, 1),
                "retransmits": rep["end"]["sum_sent"].get("retransmits")}
    finally:
        if srv.poll() is None:
            srv.kill()
        srv.wait(5)


@pytest.mark.slow
def test_balance_aggregates_rate_limited_paths(env2: Env) -> None:
    """Two 10 Mbit/s paths (tbf): one TCP flow gets ~2x with balance + reorder buffer.

    Rates low enough that the daemons' CPU is not the bottleneck on a busy box; the
    best of two runs per policy, so one scheduling stall does not decide the result.
    """
    lab = env2.lab
    for i in range(2):
        for host, dev in ((lab.a, lab.links[i][0]), (lab.b, lab.links[i][1])):
            res = host.run("tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", "10mbit",
                           "burst", "16kb", "latency", "50ms", check=False)
            if res.returncode != 0:
                pytest.skip(f"needs the tbf qdisc: {res.stderr.strip()}")
    results: dict[str, Any] = {}
    for policy in ("active-backup", "balance"):
        server, client = mp_pair(env2, policy)
        client.wait_state("up")
        wait_all_up([server, client])
        runs = [iperf3_tcp(env2) for _ in range(2)]
        results[policy] = max(runs, key=lambda r: r["mbit"])
        results[policy]["runs_mbit"] = [r["mbit"] for r in runs]
        results[policy]["reorder"] = multipath(server).get("reorder")
        for d in (client, server):
            assert d.stop() == 0
    record("balance/tcp_2x10mbit", results)
    assert results["balance"]["mbit"] > 1.3 * results["active-backup"]["mbit"], results


def test_client_restart_recovers(env2: Env) -> None:
    """A restarted client (new ports, counters from 1 again) is followed on every path
    and not dropped as 'too old' by the server's duplicate filter."""
    server, client = mp_pair(env2, "duplicate")
    client.wait_state("up")
    wait_all_up([server, client])
    assert env2.b.ping(TUN_A, count=200, interval=0.005) == (200, 200)  # counters move on
    client.kill9()
    client2 = env2.daemon(env2.b, client.argv, "mp-client2")
    client2.wait_state("up")
    wait_all_up([server, client2])
    sent, got = env2.b.ping(TUN_A, count=20, interval=0.05)
    assert got >= 19, (sent, got)
    assert multipath(server)["peer_restarts"] == 1  # seen by the probe epoch, once
