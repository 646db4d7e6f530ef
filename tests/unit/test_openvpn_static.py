"""OpenVPN static-key connections, sans I/O: two connections talking in memory."""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.padding import PKCS7

from tunconnector.errors import ConfigError, CryptoError
from tunconnector.proto.connection import AddressChanged, Connected, Disconnected
from tunconnector.proto.offload import VNET_HDR_LEN
from tunconnector.proto.openvpn.common import OCC_MAGIC, PING_MAGIC
from tunconnector.proto.openvpn.keyfile import format_static_key, parse_static_key
from tunconnector.proto.openvpn.static import (
    PacketIdReplay,
    StaticKeyConnection,
    StaticKeyCrypto,
    check_cipher,
    options_string,
)

KEY = parse_static_key(format_static_key(bytes(range(256))))
CLIENT_ADDR = ("10.0.0.2", 1191)
SERVER_ADDR = ("10.0.0.1", 1191)


def pair(cipher: str = "none", auth: str = "SHA1",
         dirs: tuple[int | None, int | None] = (None, None),
         stream: bool = False, **kw: object) -> tuple[StaticKeyConnection, StaticKeyConnection]:
    c = StaticKeyConnection(KEY, direction=dirs[0], cipher=cipher, auth=auth, mode="client",
                            remote=SERVER_ADDR, stream=stream, **kw)  # type: ignore[arg-type]
    s = StaticKeyConnection(KEY, direction=dirs[1], cipher=cipher, auth=auth, mode="server",
                            stream=stream, **kw)  # type: ignore[arg-type]
    return c, s


def events(conn: StaticKeyConnection) -> list[object]:
    out = []
    while (ev := conn.next_event()) is not None:
        out.append(ev)
    return out


def deliver(src: StaticKeyConnection, dst: StaticKeyConnection, now: float,
            addr: tuple[str, int] = CLIENT_ADDR) -> int:
    """Hand src's output to dst; returns how many packets moved."""
    if src.stream:
        chunks = src.stream_to_send(now)
        if chunks:
            dst.receive_stream(b"".join(chunks), now)
        return len(chunks)
    dgrams = src.datagrams_to_send(now)
    for data, _ in dgrams:
        dst.receive_datagram(data, addr if src.mode == "client" else SERVER_ADDR, now)
    return len(dgrams)


def roundtrip(c: StaticKeyConnection, s: StaticKeyConnection, now: float) -> None:
    for _ in range(4):
        if deliver(c, s, now) + deliver(s, c, now) == 0:
            return


@pytest.mark.parametrize("cipher,auth,dirs", [
    ("none", "SHA1", (None, None)),
    ("AES-256-CBC", "SHA256", (0, 1)),
    ("AES-128-CBC", "SHA512", (1, 0)),
    ("AES-256-CBC", "none", (None, None)),
    ("none", "none", (0, 1)),
])
def test_handshake_and_frames_both_ways(cipher: str, auth: str, dirs: tuple[int, int]) -> None:
    c, s = pair(cipher, auth, dirs)
    c.start(0.0)
    s.start(0.0)
    roundtrip(c, s, 0.0)
    assert [type(e) for e in events(c)] == [Connected]
    ev = events(s)
    assert [type(e) for e in ev] == [Connected] and ev[0].addr == CLIENT_ADDR  # type: ignore[attr-defined]
    assert s.peer_options == c.options and c.peer_options == s.options
    assert c.peer_options == c.expected_options and s.peer_options == s.expected_options
    frames = [os.urandom(n) for n in (1, 15, 16, 17, 100, 1400)]
    c.send_frames(frames, 0.1)
    deliver(c, s, 0.1)
    assert s.frames_to_deliver() == frames
    s.send_frames(frames[::-1], 0.1)
    deliver(s, c, 0.1)
    assert c.frames_to_deliver() == frames[::-1]
    assert not c.drops and not s.drops


@pytest.mark.parametrize("cipher,auth", [("none", "SHA1"), ("AES-256-CBC", "SHA256")])
def test_send_frames_skips_the_device_header(cipher: str, auth: str) -> None:
    """``offset``: a device's zero virtio_net_hdr in front of each frame is left out of
    the sealed packet (no copy first), also for the lane's one frame."""
    c, s = pair(cipher, auth, (0, 1))
    c.start(0.0)
    s.start(0.0)
    roundtrip(c, s, 0.0)
    frames = [os.urandom(n) for n in (1, 100, 1400)]
    hdr = bytes(VNET_HDR_LEN)
    c.send_frames([hdr + f for f in frames], 0.1, VNET_HDR_LEN)
    deliver(c, s, 0.1)
    assert s.frames_to_deliver() == frames
    sealed = c.send_one(hdr + frames[1], 0.2, vnet_hdr=True)
    assert isinstance(sealed, bytes)
    s.receive_datagram(sealed, CLIENT_ADDR, 0.2)
    assert s.frames_to_deliver() == [frames[1]]
    assert not c.drops and not s.drops


def test_wire_layout_cipher_none_sha1() -> None:
    c = StaticKeyConnection(KEY, cipher="none", auth="SHA1", remote=SERVER_ADDR,
                            clock_offset=1_700_000_000)
    c.start(5.0)
    c.datagrams_to_send(5.0)  # the hello
    c.send_frames([b"payload"], 5.0)
    [(data, addr)] = c.datagrams_to_send(5.0)
    assert addr == SERVER_ADDR
    assert len(data) == 20 + 8 + 7
    pid, ptime = struct.unpack_from("!II", data, 20)
    assert pid == 2 and ptime == 1_700_000_005
    assert data[28:] == b"payload"


def test_directions_must_be_opposite() -> None:
    c, s = pair("AES-256-CBC", "SHA256", (0, 0))
    c.start(0)
    s.start(0)
    roundtrip(c, s, 0)
    assert s.drops["bad_hmac"] >= 1 and not events(s)


def test_wrong_key_counts_drops() -> None:
    other = parse_static_key(format_static_key(bytes(255 - i for i in range(256))))
    c = StaticKeyConnection(KEY, cipher="none", remote=SERVER_ADDR)
    s = StaticKeyConnection(other, cipher="none", mode="server")
    c.start(0)
    s.start(0)
    c.send_frames([b"x" * 60] * 5, 0)
    deliver(c, s, 0)
    assert s.drops["bad_hmac"] == 6 and s.frames_to_deliver() == [] and s.peer is None


def test_replay_dropped_and_does_not_move_peer() -> None:
    c, s = pair("AES-256-CBC", "SHA1")
    c.start(0)
    s.start(0)
    roundtrip(c, s, 0)
    c.send_frames([b"a" * 80], 1)
    [(data, _)] = c.datagrams_to_send(1)
    s.receive_datagram(data, CLIENT_ADDR, 1)
    assert len(s.frames_to_deliver()) == 1
    for _ in range(1000):
        s.receive_datagram(data, ("192.0.2.9", 4444), 1)
    assert s.drops["replay"] == 1000 and s.peer == CLIENT_ADDR and not s.frames_to_deliver()


def test_replay_rules() -> None:
    r = PacketIdReplay()
    assert r.update(5, 100)
    assert not r.update(5, 100)
    assert r.update(3, 100) and r.update(4, 100)
    assert not r.update(1, 99)  # time went back
    assert r.update(1, 101)  # time forward: a new window
    assert not r.update(5, 100)
    assert not r.update(0, 101)
    assert r.update(10_000, 101) and not r.update(10, 101)  # far behind the window


def test_ping_sent_when_idle_and_swallowed() -> None:
    c, s = pair(keepalive=10, dead_after=60)
    c.start(0)
    s.start(0)
    roundtrip(c, s, 0)
    events(c), events(s)
    assert c.get_timer() is not None and c.get_timer() <= 10  # type: ignore[operator]
    c.handle_timer(10.0)
    s.handle_timer(10.0)
    roundtrip(c, s, 10.0)
    assert s.counters["ping_rx"] >= 1 and c.counters["ping_rx"] >= 1
    assert s.frames_to_deliver() == [] and c.frames_to_deliver() == []


def test_ping_restart_and_recovery() -> None:
    c, s = pair(keepalive=1, dead_after=5)
    c.start(0)
    s.start(0)
    roundtrip(c, s, 0)
    events(c), events(s)
    now = 0.0
    while now < 6:  # the server is silent (lost): the client pings, hears nothing
        now = c.get_timer()  # type: ignore[assignment]
        c.handle_timer(now)
        c.datagrams_to_send(now)
    ev = events(c)
    assert len(ev) == 1 and isinstance(ev[0], Disconnected) and ev[0].restart
    assert "ping-restart" in ev[0].reason
    # hellos go on every second; the server answers: up again
    t = c.get_timer()
    assert t is not None and t <= now + 1.0
    c.handle_timer(t)
    roundtrip(c, s, t)
    assert [type(e) for e in events(c)] == [Connected]


def test_occ_exit_marks_peer_down_at_once() -> None:
    c, s = pair()
    c.start(0)
    s.start(0)
    roundtrip(c, s, 0)
    events(c), events(s)
    c.close(1.0)
    deliver(c, s, 1.0)
    ev = events(s)
    assert len(ev) == 1 and isinstance(ev[0], Disconnected) and "EXIT" in ev[0].reason
    assert c.get_timer() is None


def test_after_exit_only_a_restarted_peer_comes_back() -> None:
    c, s = pair(clock_offset=1000)
    c.start(0)
    s.start(0)
    roundtrip(c, s, 0)
    events(s)
    exiting = StaticKeyConnection(KEY, cipher="none", remote=SERVER_ADDR, clock_offset=1000)
    c.close(1)
    deliver(c, s, 1)
    exiting._time, exiting._pid = c._time, c._pid  # the same process, after its EXIT
    exiting.send_frames([b"late" * 20], 1.5)
    deliver(exiting, s, 1.5)
    assert [type(e) for e in events(s)] == [Disconnected] and not s.alive
    assert s.frames_to_deliver() == [b"late" * 20]
    again, _ = pair(clock_offset=1002)  # restarted: a later time value
    again.start(2)
    deliver(again, s, 2)
    assert [type(e) for e in events(s)] == [Connected]


def test_server_follows_new_address_with_float() -> None:
    c, s = pair(allow_float=True)
    c.start(0)
    s.start(0)
    roundtrip(c, s, 0)
    events(s)
    c.send_frames([b"z" * 50], 1)
    for data, _ in c.datagrams_to_send(1):
        s.receive_datagram(data, ("10.0.0.3", 5555), 1)
    ev = events(s)
    assert ev == [AddressChanged(1, ("10.0.0.3", 5555))] and s.peer == ("10.0.0.3", 5555)


def test_server_without_float_keeps_its_live_peer() -> None:
    c, s = pair(dead_after=6.0, keepalive=2.0)
    c.start(0)
    s.start(0)
    roundtrip(c, s, 0)
    events(s)
    c.send_frames([b"z" * 50], 1)
    sent = [d for d, _ in c.datagrams_to_send(1)]
    for data in sent:
        s.receive_datagram(data, ("10.0.0.3", 5555), 1)
    assert events(s) == [] and s.peer == CLIENT_ADDR and s.drops["float_refused"] == 1
    assert s.frames_to_deliver() == []
    # the refused packet was not taken into the replay state: from the peer it counts
    for data in sent:
        s.receive_datagram(data, CLIENT_ADDR, 1.5)
    assert s.frames_to_deliver() == [b"z" * 50]
    # once the peer is dead, the next peer that authenticates is taken (first-peer rule)
    s.handle_timer(1.5 + 6.0)
    assert [type(e) for e in events(s)] == [Disconnected]
    c.send_frames([b"x" * 50], 8)
    for data, _ in c.datagrams_to_send(8):
        s.receive_datagram(data, ("10.0.0.3", 5555), 8)
    assert s.peer == ("10.0.0.3", 5555) and s.alive


def reflect_server_packets(c: StaticKeyConnection, s: StaticKeyConnection, now: float,
                           attacker: tuple[str, int] = ("10.0.0.66", 4444)) -> None:
    """What the server sent (captured on the way) comes back to it from a third host."""
    captured = [d for d, _ in s.datagrams_to_send(now)]
    assert captured
    for d in captured[:3]:
        s.receive_datagram(d, attacker, now)


@pytest.mark.parametrize("allow_float", [False, True])
def test_reflected_datagrams_never_move_the_peer(allow_float: bool) -> None:
    c, s = pair(dead_after=6.0, keepalive=2.0, allow_float=allow_float)
    c.start(0)  # the client first, then the server: its time value is the later one
    s.clock_offset = 5
    s.start(0)
    roundtrip(c, s, 0)
    events(s)
    s.send_frames([b"s" * 60, b"t" * 60, b"u" * 60], 1)
    reflect_server_packets(c, s, 1)
    assert s.peer == CLIENT_ADDR and s.drops["reflected"] == 3
    assert events(s) == [] and s.frames_to_deliver() == []
    c.send_frames([b"c" * 60], 2)  # the real client is still served
    deliver(c, s, 2)
    assert s.frames_to_deliver() == [b"c" * 60] and s.drops["replay"] == 0


def test_same_time_value_on_both_ends_is_told_apart() -> None:
    c, s = pair()  # both start in the same second: one time value
    c.start(0)
    s.start(0)
    assert c._time == s._time
    roundtrip(c, s, 0)
    assert c.alive and s.alive and c._time != s._time
    c.send_frames([b"a" * 30], 1)
    s.send_frames([b"b" * 30], 1)
    roundtrip(c, s, 1)
    assert s.frames_to_deliver() == [b"a" * 30] and c.frames_to_deliver() == [b"b" * 30]
    assert not c.drops and not s.drops


def test_client_unanswered_restarts_its_session_within_dead_after() -> None:
    # a server whose replay state is ahead of the client's time value (a packet of an
    # older process of the client, say): the client's packets are refused as replays
    # while the server's pings still reach it
    c, s = pair(dead_after=6.0, keepalive=2.0, clock_offset=1000)
    c.start(0)
    s.start(0)
    roundtrip(c, s, 0)
    assert c.alive and s.alive
    ahead = StaticKeyConnection(KEY, cipher="none", remote=SERVER_ADDR, clock_offset=1003)
    ahead.start(0)
    ahead.send_frames([b"p" * 20], 0.5)
    deliver(ahead, s, 0.5)
    s.frames_to_deliver()
    now, served = 0.5, False
    while now < 30 and not served:
        now += 0.25
        c.handle_timer(now)
        s.handle_timer(now)
        c.send_frames([b"up"], now)
        roundtrip(c, s, now)
        served = b"up" in s.frames_to_deliver()
    assert served and c.counters["restarts"] == 1
    assert now <= 6.0 + 1.0  # no OCC reply for dead_after: a new session, served at once


def test_client_refuses_other_sources() -> None:
    c, s = pair()
    c.start(0)
    s.start(0)
    roundtrip(c, s, 0)
    s.send_frames([b"q" * 40], 1)
    for data, _ in s.datagrams_to_send(1):
        c.receive_datagram(data, ("10.9.9.9", 1), 1)
    assert c.drops["unknown_peer"] == 1


def test_tcp_stream_byte_by_byte() -> None:
    c, s = pair("AES-256-CBC", "SHA256", (1, 0), stream=True)
    c.start(0)
    s.start(0)
    c.connection_made(0)
    s.connection_made(0)
    roundtrip(c, s, 0)
    assert [type(e) for e in events(s)] == [Connected]
    frames = [os.urandom(n) for n in (60, 1500, 1518)]
    c.send_frames(frames, 1)
    data = b"".join(c.stream_to_send(1))
    assert struct.unpack_from("!H", data)[0] + 2 < len(data)
    for i in range(len(data)):
        s.receive_stream(data[i:i + 1], 1)
    assert s.frames_to_deliver() == frames
    s.receive_stream(b"", 2)
    assert [type(e) for e in events(s)] == [Disconnected]


def test_tcp_bad_length_goes_down() -> None:
    c, s = pair(stream=True)
    s.start(0)
    s.connection_made(0)
    s.receive_stream(b"\x00\x00", 0)
    assert s.drops["bad_length"] == 1
    s.receive_stream(b"more", 0)  # ignored: the stream is poisoned


@pytest.mark.parametrize("cipher,auth", [("none", "SHA1"), ("AES-256-CBC", "SHA256"),
                                         ("AES-128-CBC", "none"), ("none", "none")])
def test_garbage_never_raises(cipher: str, auth: str) -> None:
    rng = random.Random(7)
    c, s = pair(cipher, auth)
    s.start(0)
    for _ in range(3000):
        n = rng.choice([0, 1, 7, 20, 27, 28, 47, 48, 64, 200, 1600])
        s.receive_datagram(rng.randbytes(n), CLIENT_ADDR, 0)
    s.frames_to_deliver()
    assert sum(s.drops.values()) >= 2900 or auth == "none"


def test_stream_garbage_never_raises() -> None:
    rng = random.Random(3)
    for _ in range(200):
        _, s = pair("AES-256-CBC", "SHA1", stream=True)
        s.start(0)
        s.connection_made(0)
        blob = rng.randbytes(rng.randrange(0, 3000))
        for i in range(0, len(blob), 97):
            s.receive_stream(blob[i:i + 97], 0)
        s.receive_stream(b"", 0)


def _openssl_decrypt(key: bytes, packet: bytes) -> bytes | None:
    """What openvpn does with a packet of a tunnel without ``auth``: CBC-decrypt against
    the packet's IV and let OpenSSL's final step check the PKCS#7 padding (a failure is
    "cipher final failed": the packet is dropped). With a valid padding the (possibly
    garbled) plaintext goes on: nothing else authenticates it."""
    dec = Cipher(algorithms.AES(key), modes.CBC(packet[:16])).decryptor()
    plain = dec.update(packet[16:]) + dec.finalize()
    unpad = PKCS7(128).unpadder()
    try:
        return unpad.update(plain) + unpad.finalize()
    except ValueError:
        return None


def test_padding_tamper_as_openvpn() -> None:
    """Without ``auth`` only the padding check stands between a tampered last block and
    the tunnel: every one of the 255 tamperings of the last byte is dropped as
    ``bad_padding`` exactly when openvpn drops it, and otherwise opens to the garbled
    plaintext openvpn would deliver (never the original)."""
    crypto = StaticKeyCrypto(KEY, None, "AES-256-CBC", "none")
    key = KEY.directional(None)[1].cipher[:32]
    payload = b"hello" * 10
    sealed = crypto.seal(struct.pack("!II", 1, 1), payload)
    assert _openssl_decrypt(key, sealed) == struct.pack("!II", 1, 1) + payload
    outcomes = {"bad_padding": 0, "opened": 0}
    for mask in range(1, 256):
        bad = bytearray(sealed)
        bad[-1] ^= mask
        want = _openssl_decrypt(key, bytes(bad))
        got = crypto.open(bytes(bad))
        if want is None:
            assert got == "bad_padding", mask
            outcomes["bad_padding"] += 1
        else:
            assert got == (1, 1, want[8:]) and want[8:] != payload, (mask, got)
            outcomes["opened"] += 1
    assert outcomes["bad_padding"] >= 240, outcomes  # ~1/256 valid paddings per byte value
    assert crypto.open(sealed) == (1, 1, payload)  # the context survives the tampering
    assert crypto.open(sealed[:-1]) == "bad_padding"
    assert crypto.open(b"x" * 10) == "short"


def test_padding_tamper_counted_by_the_connection() -> None:
    c, s = pair("AES-256-CBC", "none")
    c.start(0)
    s.start(0)
    roundtrip(c, s, 0)
    c.send_frames([b"hello" * 10], 0.1)
    [(data, _)] = c.datagrams_to_send(0.1)
    key = KEY.directional(None)[1].cipher[:32]
    masks = [m for m in range(1, 256)
             if _openssl_decrypt(key, data[:-1] + bytes([data[-1] ^ m])) is None]
    s.receive_datagram(data[:-1] + bytes([data[-1] ^ masks[0]]), CLIENT_ADDR, 0.1)
    assert s.drops["bad_padding"] == 1 and s.frames_to_deliver() == []
    s.receive_datagram(data, CLIENT_ADDR, 0.1)
    assert s.frames_to_deliver() == [b"hello" * 10]


def test_cipher_checks() -> None:
    with pytest.raises(ConfigError, match="BF-CBC"):
        check_cipher("BF-CBC", "SHA1")
    with pytest.raises(ConfigError):
        check_cipher("AES-256-CBC", "MD5")


def test_options_string_matches_openvpn() -> None:
    # captured from openvpn 2.6.14 with the enabler's config (dev tap, udp4, cipher none)
    assert options_string(dev_type="tap", tun_mtu=1500, proto="udp", mode="server",
                          cipher="none", auth="SHA1") == (
        "V4,dev-type tap,link-mtu 1560,tun-mtu 1500,proto UDPv4,cipher [null-cipher],"
        "auth SHA1,keysize 0,secret")


def test_key_file_parse_and_errors() -> None:
    text = format_static_key(bytes(range(256)))
    assert text.startswith("#") and text.count("\n") == 21
    key = parse_static_key(text)
    assert "secret" in repr(key) and "00010203" not in repr(key)
    send0, recv0 = key.directional(0)
    send1, recv1 = key.directional(1)
    assert send0 == recv1 and recv0 == send1 and send0.cipher == bytes(range(64))
    assert key.directional(None) == (key.half(0), key.half(0))
    with pytest.raises(CryptoError, match="no '-----BEGIN"):
        parse_static_key("hello")
    with pytest.raises(CryptoError, match="bytes, expected 256"):
        parse_static_key(text.replace("000102030405060708090a0b0c0d0e0f\n", ""))
    with pytest.raises(CryptoError, match="hexadecimal"):
        parse_static_key(text.replace("00010203", "zz010203"))
    assert OCC_MAGIC != PING_MAGIC


def test_key_parse_tolerates_joined_lines() -> None:
    # the enabler's API example: the file's lines joined by spaces
    text = format_static_key(bytes(range(256)))
    assert parse_static_key(" ".join(text.splitlines())).material == bytes(range(256))


def test_without_credentials_and_fetch_errors() -> None:
    from tunconnector.api.enabler import without_credentials

    assert without_credentials("http://u:p%40ss@10.0.0.1:3333/x") == "http://10.0.0.1:3333/x"
    assert without_credentials("http://10.0.0.1:3333") == "http://10.0.0.1:3333"


def test_genkey_openvpn_and_mode_check(tmp_path: Path) -> None:
    from tunconnector.cli import main
    from tunconnector.keys import load_openvpn_key_file

    path = tmp_path / "ta.key"
    assert main(["genkey", "--openvpn", str(path)]) == 0
    assert path.stat().st_mode & 0o777 == 0o600
    key = load_openvpn_key_file(path)
    assert len(key.material) == 256
    assert main(["genkey", "--openvpn", str(path)]) == 1  # never overwritten
    path.chmod(0o644)
    with pytest.raises(CryptoError, match="too open"):
        load_openvpn_key_file(path)


def _tunnel(**kw: object) -> dict[str, object]:
    t: dict[str, object] = {"name": "ov", "mode": "client", "remote": "192.0.2.1",
                            "framing": "openvpn", "openvpn_secret": "ta.key"}
    t.update(kw)
    return {"tunnel": [t]}


@pytest.mark.parametrize("kw,where,text", [
    ({"openvpn_cipher": "BF-CBC"}, "tunnel[0].openvpn_cipher", "BF-CBC is not supported"),
    ({"openvpn_cipher": "AES-256-GCM"}, "tunnel[0].openvpn_cipher", "is not one of"),
    ({"openvpn_auth": "MD5"}, "tunnel[0].openvpn_auth", "is not one of"),
    ({"key_direction": 2}, "tunnel[0].key_direction", "must be 0 or 1"),
    ({"openvpn_secret": None}, "tunnel[0].openvpn_secret", "static key file"),
    ({"framing": "native"}, "tunnel[0].openvpn_secret", "only used with framing"),
    ({"framing": "native", "openvpn_secret": None, "openvpn_float": True},
     "tunnel[0].openvpn_float", "only used with framing"),
    ({"framing": "native", "openvpn_secret": None, "openvpn_replay_persist": "r.json"},
     "tunnel[0].openvpn_replay_persist", "only used with framing"),
])
def test_config_errors_name_the_key(kw: dict[str, object], where: str, text: str) -> None:
    from tunconnector.config import Config

    data = _tunnel(**kw)
    if kw.get("openvpn_secret", "") is None:
        del data["tunnel"][0]["openvpn_secret"]  # type: ignore[index,attr-defined]
    with pytest.raises(ConfigError) as err:
        Config.from_mapping(data)
    assert str(err.value).startswith(where) and text in str(err.value)


def test_config_and_cli_flags() -> None:
    from tunconnector.cli import config_from_legacy, legacy_parser
    from tunconnector.config import Config

    t = Config.from_mapping(_tunnel(key_direction=1, openvpn_cipher="none")).tunnel[0]
    assert (t.openvpn_cipher, t.openvpn_auth, t.key_direction) == ("none", "SHA1", 1)
    args = legacy_parser().parse_args([
        "-m", "client", "-c", "10.8.0.2", "-r", "192.0.2.1", "--framing", "openvpn",
        "--openvpn-secret", "ta.key", "--key-direction", "0", "--openvpn-cipher",
        "AES-128-CBC", "--openvpn-auth", "SHA256"])
    t = config_from_legacy(args).tunnel[0]
    assert (t.framing, t.openvpn_secret, t.key_direction) == ("openvpn", "ta.key", 0)
    assert (t.openvpn_cipher, t.openvpn_auth) == ("AES-128-CBC", "SHA256")


def test_bond_wire_openvpn_tunnels() -> None:
    from tunconnector.bond import tunnel_configs
    from tunconnector.config import BondConfig, build

    cfg = build(BondConfig, {"role": "server", "name": "br0", "bridge_ip": "10.8.0.254",
                             "links": 2, "wire": "openvpn", "openvpn_secret": "ta.key"}, "b")
    ts = tunnel_configs(cfg)
    assert [(t.device, t.port, t.framing) for t in ts] == [
        ("tap1", 1191, "openvpn"), ("tap2", 1192, "openvpn")]
    assert {(t.openvpn_cipher, t.openvpn_auth, t.key_direction) for t in ts} == {
        ("none", "SHA1", None)}
    assert (ts[0].keepalive, ts[0].dead_after) == (15.0, 60.0)
    with pytest.raises(ConfigError, match="openvpn_secret"):
        build(BondConfig, {"role": "server", "name": "br0", "bridge_ip": "10.8.0.254",
                           "wire": "openvpn"}, "b")


def test_replay_persist_refuses_what_the_crashed_process_accepted(tmp_path: Path) -> None:
    from tunconnector.adapter import load_persisted, save_persisted

    c, s = pair(clock_offset=1000)
    c.start(0)
    s.start(0)
    roundtrip(c, s, 0)
    captured = []
    for i in range(200):  # what an attacker recorded on the wire
        c.send_frames([b"%03d" % i + b"d" * 40], 1 + i * 0.01)
        for data, _ in c.datagrams_to_send(1):
            captured.append(data)
            s.receive_datagram(data, CLIENT_ADDR, 1)
    assert len(s.frames_to_deliver()) == 200
    path = tmp_path / "replay.json"
    save_persisted(str(path), s.persist_state())  # the last save before the crash
    # a new server process: without the file 200 of 200 replays are delivered
    fresh = StaticKeyConnection(KEY, cipher="none", mode="server", clock_offset=1010)
    fresh.start(10)
    for data in captured:
        fresh.receive_datagram(data, ("10.0.0.66", 4444), 10)
    assert len(fresh.frames_to_deliver()) == 200 and fresh.peer == ("10.0.0.66", 4444)
    # with it, none is, and the peer does not move
    again = StaticKeyConnection(KEY, cipher="none", mode="server", clock_offset=1010,
                                persisted=load_persisted(str(path), "t"))
    again.start(10)
    assert again._time > max(s.persist_state()["own_times"])
    for data in captured:
        again.receive_datagram(data, ("10.0.0.66", 4444), 10)
    assert again.frames_to_deliver() == [] and again.peer is None
    assert again.drops["replay"] == 200
    # the real client's next packet is taken
    c.send_frames([b"next"], 11)
    deliver(c, again, 11)
    assert again.frames_to_deliver() == [b"next"] and again.peer == CLIENT_ADDR
    # our own packets of the earlier process, sent back, are recognised too
    s.send_frames([b"own"], 12)
    for data, _ in s.datagrams_to_send(12):
        again.receive_datagram(data, ("10.0.0.66", 4444), 12)
    assert again.drops["reflected"] == 1 and again.peer == CLIENT_ADDR


def test_replay_persist_file_missing_or_broken(tmp_path: Path) -> None:
    from tunconnector.adapter import load_persisted

    assert load_persisted(str(tmp_path / "none.json"), "t") == {}
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert load_persisted(str(bad), "t") == {}
    s = StaticKeyConnection(KEY, cipher="none", mode="server",
                            persisted={"peer_time": "x", "own_times": ["y", 5]})
    assert s.persistent and s.persist_state() == {"peer_time": None, "peer_pid": None,
                                                  "own_times": [5]}


def test_frames_before_the_tunnel_was_ever_up_are_counted_apart() -> None:
    from tunconnector.tunnel import TunnelStats, no_peer

    stats = TunnelStats()
    assert no_peer(stats) == "no_peer_yet"
    stats.ever_up = True
    assert no_peer(stats) == "no_peer"
    s = StaticKeyConnection(KEY, cipher="none", mode="server")
    s.start(0)
    s.send_frames([b"x" * 40], 0.1)  # the kernel's router solicitation at device start
    assert dict(s.drops) == {"no_peer_yet": 1}
