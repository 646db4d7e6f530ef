"""The hub's data path without devices or sockets: what UDP GRO and the offload device
hand it (memoryview slices, super-packets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from test_hub_table import make_hub

from tunconnector.hub import INIT_LEN
from tunconnector.proto.framing import HEADER, HEADER_LEN, VERSION, MsgType


class _Loop:
    def time(self) -> float:
        return 100.0


def _msg(mtype: int, size: int, session: int = 7) -> bytes:
    return HEADER.pack(VERSION, mtype, 0, 0, session, 1) + bytes(size - HEADER_LEN)


def test_gro_slices_reach_the_slow_path_as_bytes(tmp_path: Path) -> None:
    """A UDP GRO read is sliced into memoryviews; initiations, fragments and unknown
    sessions are handled (and counted) as the bytes datagrams they were."""
    hub = make_hub(tmp_path)
    hub._loop = _Loop()  # type: ignore[assignment]
    seen: list[Any] = []
    real = hub._on_initiation

    def spy(data: Any, addr: Any, raw: Any, now: float) -> Any:
        seen.append(type(data))
        return real(data, addr, raw, now)

    hub._on_initiation = spy  # type: ignore[method-assign]
    init = _msg(MsgType.HANDSHAKE_INIT, INIT_LEN)
    frag = _msg(MsgType.FRAGMENT, HEADER_LEN + 2)
    data = _msg(MsgType.DATA, 100)
    buf = memoryview(init * 2 + frag + data)
    raw = ("192.0.2.1", 4000)
    hub._on_udp_batch([(buf[:INIT_LEN], raw), (buf[INIT_LEN:2 * INIT_LEN], raw),
                       (buf[2 * INIT_LEN:2 * INIT_LEN + len(frag)], raw),
                       (buf[2 * INIT_LEN + len(frag):], raw)])
    assert seen == [bytes, bytes]
    drops = hub.stats.drops
    assert drops["bad_mac"] == 2
    assert drops["fragment_truncated"] == 1
    assert drops["unknown_session"] == 1
