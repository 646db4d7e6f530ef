"""`tunconnector bench` runs the checkout's bench/ from any directory."""

from __future__ import annotations

import subprocess
import sys


def test_bench_subcommand_lists_peers_from_any_cwd(tmp_path: object) -> None:
    r = subprocess.run([sys.executable, "-m", "tunconnector", "bench", "--list"],
                       cwd=str(tmp_path), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    names = [line.split()[0] for line in r.stdout.splitlines() if line.strip()]
    assert "ovpn-gcm" in names and "tc-tun-udp-aead" in names


def test_bench_peers_start_this_interpreters_cli(monkeypatch: object) -> None:
    """No checkout ``.venv`` assumed: the bench's tunnels are ``python -m tunconnector``
    of the interpreter running it (a venv anywhere), unless BENCH_TUNCONNECTOR says."""
    import importlib
    import os
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    saved = os.environ.pop("BENCH_TUNCONNECTOR", None)
    try:
        peers = importlib.reload(importlib.import_module("bench.peers"))
        assert peers.TUNCONNECTOR == [sys.executable, "-m", "tunconnector"]
        os.environ["BENCH_TUNCONNECTOR"] = "/opt/other build/bin/tunconnector --x"
        peers = importlib.reload(peers)
        assert peers.TUNCONNECTOR == ["/opt/other", "build/bin/tunconnector", "--x"]
    finally:
        os.environ.pop("BENCH_TUNCONNECTOR", None)
        if saved is not None:
            os.environ["BENCH_TUNCONNECTOR"] = saved
        importlib.reload(importlib.import_module("bench.peers"))


def test_ab_knows_the_hub_peers_and_rejects_unknown_ones(capsys: object) -> None:
    """bench.ab takes the hub peers by name (1 and 4 active clients) and refuses a typo
    before building any namespace."""
    from bench import ab, peers

    hubs = {p.name: p for p in peers.hub_peers()}
    assert set(hubs) == {"tc-hub1-udp-aead", "tc-hub4-udp-aead"}
    assert [h.active for h in hubs.values() if isinstance(h, peers.HubBenchPeer)] == [1, 4]
    assert ab.main(["--a", ".", "--b", ".", "--peers", "tc-hub1-udp-aead,tc-hub9"]) == 2
    assert "tc-hub9" in capsys.readouterr().err  # type: ignore[attr-defined]
