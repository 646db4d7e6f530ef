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
