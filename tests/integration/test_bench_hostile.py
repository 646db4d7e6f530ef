"""bench/hostile.py stays runnable: each item briefly, with a light flood.

The full measurement (``python -m bench.hostile``: 120k datagrams/s for 17 s) is a
benchmark, not a test. Here each item runs for a few seconds at 3,000 datagrams/s, and
the test asserts what must hold at any rate: the flood reached the attacked daemon, each
datagram of it is accounted for (dropped and counted by the daemon, or dropped by the
kernel before the daemon read it), and the live path works during and after the load.
The <= 1 % loss / 2x RTT rule is printed, not asserted: it is not stable here. On this
shared 2-core machine (load 6-8 from other work) two runs at 3,000 datagrams/s lost no
echo in any item, but the RTT ratio moved from 0.6x to 8.8x between runs of the same item
(item 3: 8.8x then 0.8x; item 4: 1.9x then 4.5x): the idle RTT is about a millisecond and
any CPU contention, load or not, multiplies it. At the full rate the rule fails outright
(docs/bench.md), which is what the benchmark is there to show.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.hostile import Options, run_item, table  # noqa: E402

pytestmark = pytest.mark.slow
NEEDS_OPENVPN = pytest.mark.skipif(shutil.which("openvpn") is None,
                                   reason="needs the openvpn binary (a hostile server)")


@pytest.mark.parametrize("item", ["1", "3", pytest.param("4", marks=NEEDS_OPENVPN),
                                  pytest.param("5", marks=NEEDS_OPENVPN)])
def test_hostile_driver_item(item: str, tmp_path: Path) -> None:
    opts = Options(idle=1.0, duration=2.0, rate=3000.0, procs=1, interval=0.02)
    row = run_item(item, opts, tmp_path)
    print(table([row]))
    sent = row.flood["sent"]
    assert sent >= 0.5 * opts.rate * opts.duration, row.flood
    kernel_dropped = row.kernel.get("RcvbufErrors", 0) + row.kernel.get("NoPorts", 0)
    assert row.flood_counted + kernel_dropped >= 0.95 * sent, (row.drops, row.kernel, sent)
    assert row.loaded.received > 0, row.loaded
    assert row.alive_after, row
