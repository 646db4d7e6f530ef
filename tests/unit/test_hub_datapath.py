"""The hub's data path without devices or sockets: what UDP GRO and the offload device
hand it (memoryview slices, super-packets)."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path
from typing import Any

from test_hub_table import make_hub

from tunconnector.hub import INIT_LEN, Hub
from tunconnector.proto import offload as o
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
    real = hub._acceptor._on_initiation

    def spy(data: Any, addr: Any, raw: Any, now: float) -> Any:
        seen.append(type(data))
        return real(data, addr, raw, now)

    hub._acceptor._on_initiation = spy  # type: ignore[method-assign]
    init = _msg(MsgType.HANDSHAKE_INIT, INIT_LEN)
    frag = _msg(MsgType.FRAGMENT, HEADER_LEN + 2)
    data = _msg(MsgType.DATA, 100)
    buf = memoryview(init * 2 + frag + data)
    raw = ("192.0.2.1", 4000)
    batch: list[Any] = [(buf[:INIT_LEN], raw), (buf[INIT_LEN:2 * INIT_LEN], raw),
                        (buf[2 * INIT_LEN:2 * INIT_LEN + len(frag)], raw),
                        (buf[2 * INIT_LEN + len(frag):], raw)]
    hub._on_udp_batch(batch)
    assert seen == [bytes, bytes]
    drops = hub.stats.drops
    assert drops["bad_mac"] == 2
    assert drops["fragment_truncated"] == 1
    assert drops["unknown_session"] == 1


def _seg(src: str, dst: str, payload: bytes, seq: int) -> bytes:
    """A plain IPv4 TCP segment (ACK) with valid checksums."""
    s, d = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    t = bytearray(struct.pack("!HHIIBBHHH", 40000, 5201, seq, 77, 5 << 4, 0x10, 512, 0, 0)
                  + payload)
    struct.pack_into("!H", t, 16, o.checksum(bytes(t), o.pseudo_header_sum(
        s, d, o.IPPROTO_TCP, len(t))))
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(t), 1, 0x4000, 64,
                               o.IPPROTO_TCP, 0, s, d))
    struct.pack_into("!H", ip, 10, o.checksum(bytes(ip)))
    return bytes(ip) + bytes(t)


def _run(src: str, dst: str, n: int = 4, size: int = 1000) -> list[bytes]:
    return [_seg(src, dst, bytes([i]) * size, 1000 + i * size) for i in range(n)]


def _tails(packets: list[Any]) -> list[bytes]:
    """Addresses, TCP header and payload (IP ID and header checksum may differ)."""
    return [bytes(p)[12:] for p in packets]


class _Dev:
    def __init__(self, vnet_hdr: bool, reads: list[bytes] | None = None) -> None:
        self.vnet_hdr = vnet_hdr
        self.fd = -1
        self.written: list[Any] = []
        self.reads = reads or []

    def write_batch(self, frames: list[Any]) -> int:
        self.written.extend(frames)
        return 0

    def read_batch(self, max_frames: int = 64) -> list[bytes]:
        out, self.reads = self.reads, []
        return out


def _hub_with(tmp_path: Path, dev: _Dev) -> tuple[Hub, list[tuple[str, list[Any]]]]:
    hub = make_hub(tmp_path)
    hub._loop = _Loop()  # type: ignore[assignment]
    hub.device = dev  # type: ignore[assignment]
    hub._coalesce = dev.vnet_hdr  # as _open_device sets it for a TUN with virtio_net_hdr
    sent: list[tuple[str, list[Any]]] = []
    hub._send_to_peer = lambda q, frames, now: sent.append(  # type: ignore[method-assign]
        (q.name, [bytes(f) for f in frames]))
    return hub, sent


def test_super_packet_to_the_device_is_written_whole(tmp_path: Path) -> None:
    dev = _Dev(vnet_hdr=True)
    hub, sent = _hub_with(tmp_path, dev)
    a, b = hub.peers["a"], hub.peers["b"]
    (g,) = o.coalesce_tcp(_run("10.220.0.50", "10.220.0.1"))
    spoofed = o.coalesce_tcp(_run("10.220.0.77", "10.220.0.1"))[0]
    c2c = _run("10.220.0.50", str(b.address))
    plain = _run(str(b.address), "10.220.0.1", n=3)
    hub._route_inbound([(a, g), (a, spoofed), (a, o.coalesce_tcp(c2c)[0])]
                       + [(b, f) for f in plain], 100.0)
    # the super-packet whole, the plain run from b coalesced into one as well
    assert len(dev.written) == 2 and dev.written[0] is g
    assert type(dev.written[1]) is o.GsoFrame
    assert _tails(dev.written[1].segments(tap=False)) == _tails(plain)
    assert a.stats.rx_packets == 4 + 4 and b.stats.rx_packets == 3
    assert a.stats.drops["spoofed_source"] == 4
    assert [(n, _tails(fs)) for n, fs in sent] == [("b", _tails(c2c))]  # segmented
    assert hub.stats.rx_packets == 4 + 3


def test_without_vnet_hdr_super_packets_are_segmented(tmp_path: Path) -> None:
    dev = _Dev(vnet_hdr=False)
    hub, _sent = _hub_with(tmp_path, dev)
    run = _run("10.220.0.50", "10.220.0.1")
    hub._route_inbound([(hub.peers["a"], o.coalesce_tcp(run)[0])], 100.0)
    assert _tails(dev.written) == _tails(run)


def test_device_reads_lose_their_zero_header(tmp_path: Path) -> None:
    pkt = _seg("10.220.0.1", "192.168.10.9", b"x" * 100, 1)
    dev = _Dev(vnet_hdr=True, reads=[o.ZERO_VNET_HDR + pkt])
    hub, sent = _hub_with(tmp_path, dev)
    hub._on_device_readable()
    assert sent == [("a", [pkt])]
    assert hub.stats.tx_bytes == len(pkt)
