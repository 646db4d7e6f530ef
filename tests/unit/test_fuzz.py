"""The standing fuzzer's short pass: every registered decoder and handshake parser, 20k
mutated inputs fed whole and byte by byte; only RemoteProtocolError may come out.
(``python -m tests.fuzz --inputs 1000000`` is the long run, see tests/fuzz/README.md.)"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fuzz.registry import discover  # noqa: E402
from tests.fuzz.runner import run  # noqa: E402

EXPECTED = {"framing.parse_header", "framing.simpletun_stream", "framing.native_stream",
            "framing.packet_info", "fragment.reassembler", "native.plain", "native.secure",
            "noise.read_message", "openvpn.control_packet", "openvpn.static_datagram"}


def test_every_area_is_registered() -> None:
    assert EXPECTED <= set(discover())


def test_short_fuzz_pass_finds_nothing() -> None:
    report = run(20_000, seed=20261201)
    assert not report.failures, report.summary()
    assert report.inputs == 20_000
    for name, counts in report.per_target.items():
        assert sum(counts.values()) > 100, name  # every target was exercised
