"""Compression framing (comp-lzo no, compress stub, stub-v2) as openvpn frames."""

from __future__ import annotations

import pytest

from tunconnector.errors import RemoteProtocolError
from tunconnector.proto.openvpn.compress import Framing, from_option

FRAME = bytes.fromhex("45000054") + bytes(range(80))


def test_comp_lzo_no_prefixes_0xfa() -> None:
    f = Framing("lzo")
    assert f.wrap(FRAME) == b"\xfa" + FRAME
    assert f.unwrap(b"\xfa" + FRAME) == FRAME


def test_stub_swaps_the_first_byte_to_the_end() -> None:
    f = Framing("stub")
    wire = f.wrap(FRAME)
    assert wire == b"\xfb" + FRAME[1:] + FRAME[:1] and len(wire) == len(FRAME) + 1
    assert f.unwrap(wire) == FRAME
    assert f.unwrap(b"\xfa" + FRAME) == FRAME  # openvpn's stub also takes the plain byte
    assert f.wrap(b"") == b""


def test_stub_v2_escapes_only_a_leading_0x50() -> None:
    f = Framing("stub-v2")
    assert f.wrap(FRAME) == FRAME and f.unwrap(FRAME) == FRAME
    odd = b"\x50" + FRAME
    assert f.wrap(odd) == b"\x50\x00" + odd
    assert f.unwrap(b"\x50\x00" + odd) == odd


@pytest.mark.parametrize(("kind", "wire"), [
    ("lzo", b"\x66" + FRAME), ("stub", b"\x69" + FRAME), ("stub-v2", b"\x50\x01" + FRAME),
])
def test_compressed_packets_are_refused(kind: str, wire: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as exc:
        Framing(kind).unwrap(wire)
    assert exc.value.reason == "compressed"


def test_options() -> None:
    assert from_option(["comp-lzo", "no"]) == "lzo"
    assert from_option(["compress"]) == "stub"
    assert from_option(["compress", "stub-v2"]) == "stub-v2"
    with pytest.raises(ValueError, match="lz4-v2: real compression"):
        from_option(["compress", "lz4-v2"])


@pytest.mark.parametrize("kind", ["lzo", "stub", "stub-v2"])
def test_any_payload_round_trips(kind: str) -> None:
    f = Framing(kind)
    for n in range(0, 4):
        for first in (0x00, 0x50, 0xFA, 0xFB, 0xFF):
            payload = bytes([first]) * n
            assert f.unwrap(f.wrap(payload)) == payload
