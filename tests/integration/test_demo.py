"""``tunconnector demo`` end to end: it works and leaves nothing behind."""

from __future__ import annotations

import subprocess

from netns import tunconnector_cmd


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_demo_runs_and_cleans_up() -> None:
    before = {n for n in _namespaces() if n.startswith("tcdemo")}
    res = subprocess.run(tunconnector_cmd("demo", "--megabytes", "16"), capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "5 received, 0% packet loss" in res.stdout
    assert "sha256 equal" in res.stdout
    assert {n for n in _namespaces() if n.startswith("tcdemo")} == before
