"""The offload fast path of one tunnel: super-packets in, few syscalls and AEAD calls out.

With ``offload = "auto"`` (and native framing) the device is opened with IFF_VNET_HDR and
TSO/USO, so the kernel hands us up to 64 KiB of TCP payload per read. Each super-packet
travels as ONE native DATA message with ``FLAG_GSO`` (its payload is the virtio_net_hdr
plus the packet; sealed with one AEAD call when encrypted). On UDP a message larger than
a datagram is cut into FRAGMENT datagrams (:mod:`.proto.fragment`) that leave with one
``sendmsg`` (UDP GSO) and arrive as one coalesced read (UDP GRO); on TCP it is framed in
the stream like any native message. The receiver writes it to its device with the header
(or segments it in software when its device has no offload).

This module sets that path up (the device, the socket's GSO/GRO, ``gso_max_size``) and
owns what a tunnel's connections share (the :class:`~.proto.fragment.Reassembler`, the
loss-adaptive size cap); the encoding is the connection's
(``NativeConnection.send_device``).

Everything falls back on its own: no IFF_VNET_HDR -> per-packet device I/O; UDP_SEGMENT
refused -> one ``send`` per fragment; UDP_GRO refused -> plain reads. ``describe()`` is
the one log line per tunnel saying which path runs.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from typing import TYPE_CHECKING, Any

from pyroute2.netlink.exceptions import NetlinkError

from .config import TunnelConfig
from .connections import uses_connection
from .errors import DeviceError
from .io import netlink as nl
from .io.device import Device, DevType
from .io.offload import (
    ENV_OFFLOAD,
    UDP_GSO_MAX_BYTES,
    UDP_MAX_SEGMENTS,
    DeviceOffload,
    SocketOffload,
    enable_device_offload,
    offload_env_off,
    probe_vnet_hdr_support,
    takes_uso_writes,
)
from .proto import fragment
from .proto.framing import HEADER_LEN, TAG_LEN
from .proto.losscap import LossAdaptiveCap
from .proto.offload import VNET_HDR_LEN


def _set_gso_max_size(name: str, size: int, netns: str | None) -> None:
    """IFLA_GSO_MAX_SIZE: the largest super-packet the stack builds for this device."""
    with nl.ipr(netns) as sock:
        found = sock.link_lookup(ifname=name)
        if not found:
            raise DeviceError(f"no interface named {name!r}")
        try:
            sock.link("set", index=found[0], gso_max_size=size)
        except NetlinkError as exc:
            raise DeviceError(f"{name}: gso_max_size {size} refused: {exc}") from exc


if TYPE_CHECKING:
    from .io.udp import UdpEndpoint

log = logging.getLogger("tunconnector.fastpath")

#: optional cap on super-packet size (bytes of TCP payload); see docs/bench.md
ENV_GSO_MAX = "TUNCONNECTOR_GSO_MAX"


def offload_wanted(cfg: TunnelConfig) -> tuple[bool, str]:
    """Whether to try offload for this tunnel, and why not when not."""
    if offload_env_off():
        return False, f"off by ${ENV_OFFLOAD}"
    if cfg.offload == "off":
        return False, "off by configuration"
    if uses_connection(cfg):
        if cfg.dev_type != "tun":
            return False, "an OpenVPN TAP carries one frame per message"
    elif cfg.framing != "native":
        return False, f"framing {cfg.framing} carries one frame per message"
    if cfg.path:
        return False, "multi-path sends frame by frame"
    return True, ""


class FastPath:
    """Offload state and helpers for one tunnel (created per tunnel start)."""

    def __init__(self, cfg: TunnelConfig, underlay_mtu: int = 1500) -> None:
        self.cfg = cfg
        self.want, self.why_not = offload_wanted(cfg)
        self.device = DeviceOffload()
        self.socket = SocketOffload()
        self.underlay_mtu = underlay_mtu
        self.reasm = fragment.Reassembler()
        self.super_tx = 0
        self.super_rx = 0
        self.gso_cap: int | None = None
        self.loss = LossAdaptiveCap()
        #: runs of a UDP flow are written to the device as one USO super-packet
        self.uso_writes = False

    # -- setup -----------------------------------------------------------------------
    def open_device(self, name: str, dev_type: DevType, *, tso: bool = True) -> Device:
        """Open the device, with virtio_net_hdr and TSO/USO when wanted and allowed.

        ``tso`` False: virtio_net_hdr without any TUNSETOFFLOAD flag (a hub, an OpenVPN
        framing): reads are plain packets behind a zero header, writes take super-packets
        whole (runs of received TCP segments coalesced into one: ``coalesce_tcp``). An
        OpenVPN connection sends one packet per message, and cutting a super-packet in
        Python (checksums included) costs more than the kernel's reads."""
        if self.want and probe_vnet_hdr_support():
            try:
                dev = Device(name, dev_type, vnet_hdr=True)
            except DeviceError as exc:
                self.why_not = f"IFF_VNET_HDR refused ({exc})"
            else:
                self.device = enable_device_offload(dev.fd, want_tso=tso)
                if self.device.enabled:
                    dev.coalesce_udp = dev_type == "tun" and (
                        self.device.uso or (not tso and takes_uso_writes(dev.fd)))
                    self.uso_writes = dev.coalesce_udp
                    return dev
                dev.close()
                self.why_not = "TUNSETVNETHDRSZ refused"
        elif self.want:
            self.why_not = "the TUN driver lacks IFF_VNET_HDR"
        self.device = DeviceOffload()
        return Device(name, dev_type)

    def gso_max_size(self) -> int | None:
        """Cap on the device's super-packets, or None to keep the kernel default (64 KiB).

        On UDP a message that fits one GSO ``sendmsg`` (44 datagrams on a 1500-byte IPv4
        underlay) also arrives as one GRO read and is put back with one join, so the
        device is told to build super-packets no larger than that. The ``gso_max_size``
        config key (and ``$TUNCONNECTOR_GSO_MAX``, first) override it: smaller is better
        on lossy links, see docs/bench.md.
        """
        env = os.environ.get(ENV_GSO_MAX, "")
        if env.isdigit():
            return max(1500, min(int(env), 65536))
        if self.cfg.gso_max_size is not None:
            return self.cfg.gso_max_size
        if self.cfg.proto != "udp":
            return None
        stride = self.underlay_mtu - 20 - 8
        segments = min(UDP_MAX_SEGMENTS, UDP_GSO_MAX_BYTES // stride)
        inner = segments * (stride - fragment.FRAG_OVERHEAD)
        encrypted = bool(self.cfg.key_file or self.cfg.private_key_file)
        overhead = HEADER_LEN + VNET_HDR_LEN + (TAG_LEN if encrypted else 0) + 64  # + margin
        return inner - overhead

    async def after_configure(self, netlink: nl.Netlink, name: str,
                              netns: str | None) -> None:
        """Apply :meth:`gso_max_size` to a device opened with offload."""
        if not self.device.enabled:
            return
        size = self.gso_max_size()
        if size is None:
            return
        try:
            await netlink.call(_set_gso_max_size, name, size, netns)
        except DeviceError as exc:
            log.debug("%s: gso_max_size not set: %s", name, exc)
        else:
            self.gso_cap = size
            self.loss.ceiling = self.loss.cap = size

    def attach_udp(self, udp: UdpEndpoint) -> None:
        """Switch UDP GSO/GRO on for the socket (also on the per-packet path, where they
        batch syscalls: runs of equal-size datagrams leave in one sendmsg and arrive in
        one read); only ``$TUNCONNECTOR_OFFLOAD=off`` keeps the socket plain too."""
        self.socket = udp.enable_offload(runs=self.cfg.framing == "native")

    def describe(self) -> str:
        if not self.device.enabled:
            text = f"per-packet path ({self.why_not or 'offload off'})"
            if self.cfg.proto == "udp":
                text += f", {self.socket.describe()}"
            return text
        parts = [f"offload path: {self.device.describe()}"]
        if self.uso_writes and not self.device.uso:
            parts.append("uso_writes=on")
        if self.gso_cap:
            parts.append(f"gso_max_size={self.gso_cap}")
        if self.cfg.proto == "udp":
            parts.append(self.socket.describe())
        return ", ".join(parts)

    # -- device -> wire --------------------------------------------------------------
    def max_datagram(self, peer: Any) -> int:
        v6 = peer is not None and ":" in str(peer[0])
        return self.underlay_mtu - (40 if v6 else 20) - 8

    # -- wire -> device: the shared reassembler ---------------------------------------
    def reassemble(self, data: bytes | memoryview, now: float,
                   drops: Counter[str]) -> bytearray | None:
        """Feed one FRAGMENT datagram; the inner native message once it is complete."""
        inner = self.reasm.feed(data, now, drops)
        if inner is not None:
            self.super_rx += 1
        return inner

    def expand_runs(self, batch: list[tuple[Any, Any]], now: float,
                    drops: Counter[str]) -> list[tuple[Any, Any]]:
        """Replace each FragmentRun of a UDP batch by the messages it completes (the hub's
        receive path; a point-to-point tunnel's connection takes runs itself)."""
        for item, _addr in batch:
            if type(item) is fragment.FragmentRun:
                break
        else:
            return batch
        out: list[tuple[Any, Any]] = []
        rstats = self.reasm.stats.drops
        before = sum(rstats.values())
        for item, addr in batch:
            if type(item) is fragment.FragmentRun:
                msgs = self.reasm.receive_run(item.buf, item.stride, now)
                self.super_rx += len(msgs)
                out.extend((m, addr) for m in msgs)
            else:
                out.append((item, addr))
        bad = sum(rstats.values()) - before
        if bad:
            drops["fragment_bad"] += bad
        return out

    def get_timer(self) -> float | None:
        """When the oldest partial reassembly expires (the tunnel's timer includes it)."""
        return self.reasm.get_timer()

    def handle_timer(self, now: float) -> None:
        self.reasm.handle_timer(now)

    def stats(self) -> dict[str, int]:
        r = self.reasm.stats
        return {"super_tx": self.super_tx, "super_rx": self.super_rx,
                "gso_cap": self.loss.cap, "gso_cap_decreases": self.loss.decreases,
                "retransmits_seen": self.loss.retransmits,
                "reassembly_expired": r.expired, "reassembly_evicted": r.evicted,
                "reassembly_pending": self.reasm.pending}
