"""AEAD keypairs: seal/open round trips, in-place buffers, tamper and replay rejection."""

from __future__ import annotations

import os

import pytest

from tunconnector.errors import CryptoError, LocalProtocolError, RemoteProtocolError
from tunconnector.proto.framing import FLAG_ENCRYPTED, HEADER_LEN, MsgType, parse_header
from tunconnector.proto.replay import REJECT_AFTER_MESSAGES
from tunconnector.proto.session import TAG_LEN, Keypair, make_aead

CIPHERS = ["chacha20-poly1305", "aes-256-gcm"]


def pair(cipher: str) -> tuple[Keypair, Keypair]:
    k1, k2 = os.urandom(32), os.urandom(32)
    a = Keypair(local_index=1, remote_index=2, send_key=k1, recv_key=k2, initiator=True,
                created=0.0, cipher=cipher)
    b = Keypair(local_index=2, remote_index=1, send_key=k2, recv_key=k1, initiator=False,
                created=0.0, cipher=cipher)
    return a, b


def _open(kp: Keypair, msg: bytes) -> bytes:
    h = parse_header(msg)
    return bytes(kp.open_into(memoryview(bytearray(msg)), h.counter))


@pytest.mark.parametrize("cipher", CIPHERS)
def test_round_trip_bytes_api(cipher: str) -> None:
    a, b = pair(cipher)
    for i, payload in enumerate([b"", b"x", os.urandom(1400), os.urandom(65536)]):
        msg = a.seal(payload, mtype=MsgType.DATA, path=3)
        h = parse_header(msg)
        assert (h.type, h.flags, h.path, h.session, h.counter) == (
            MsgType.DATA, FLAG_ENCRYPTED, 3, 2, i)
        assert len(msg) == HEADER_LEN + len(payload) + TAG_LEN
        assert _open(b, msg) == payload


@pytest.mark.parametrize("cipher", CIPHERS)
def test_in_place_with_headroom(cipher: str) -> None:
    a, b = pair(cipher)
    payload = os.urandom(9000)
    buf = bytearray(HEADER_LEN + len(payload) + TAG_LEN + 100)  # spare room is fine
    buf[HEADER_LEN:HEADER_LEN + len(payload)] = payload
    n = a.seal_into(buf, len(payload), mtype=MsgType.DATA)
    assert n == HEADER_LEN + len(payload) + TAG_LEN
    msg = memoryview(buf)[:n]
    h = parse_header(msg)
    out = bytearray(len(payload))
    view = b.open_into(msg, h.counter, memoryview(out))
    assert bytes(view) == payload == bytes(out)
    with pytest.raises(LocalProtocolError):
        a.seal_into(bytearray(HEADER_LEN + 10), 10, mtype=MsgType.DATA)  # no tail-room


@pytest.mark.parametrize("cipher", CIPHERS)
def test_every_single_byte_flip_rejected(cipher: str) -> None:
    a, b = pair(cipher)
    msg = a.seal(b"0123456789abcdef" * 4, mtype=MsgType.DATA)
    for i in range(len(msg)):
        for flip in (0x01, 0x80):
            bad = bytearray(msg)
            bad[i] ^= flip
            with pytest.raises(RemoteProtocolError) as exc:
                b.open_into(memoryview(bad), int.from_bytes(bad[8:16], "big"))
            assert exc.value.reason in ("decrypt_failed", "replay")
    assert _open(b, msg) == b"0123456789abcdef" * 4  # the window did not move


def test_replay_and_truncated() -> None:
    a, b = pair("chacha20-poly1305")
    msg = a.seal(b"data", mtype=MsgType.DATA)
    assert _open(b, msg) == b"data"
    with pytest.raises(RemoteProtocolError, match="replay"):
        _open(b, msg)
    with pytest.raises(RemoteProtocolError) as exc:
        b.open_into(memoryview(bytearray(msg[:HEADER_LEN + 5])), 1)
    assert exc.value.reason == "truncated"


def test_counter_limit_refuses_to_send() -> None:
    a, _ = pair("chacha20-poly1305")
    a.send_counter = REJECT_AFTER_MESSAGES - 1
    a.seal(b"last", mtype=MsgType.DATA)
    assert a.exhausted
    with pytest.raises(LocalProtocolError):
        a.seal(b"one too many", mtype=MsgType.DATA)


def test_cross_cipher_fails_and_bad_names() -> None:
    k = os.urandom(32)
    a = Keypair(local_index=1, remote_index=2, send_key=k, recv_key=k, initiator=True,
                created=0, cipher="aes-256-gcm")
    b = Keypair(local_index=2, remote_index=1, send_key=k, recv_key=k, initiator=False,
                created=0, cipher="chacha20-poly1305")
    with pytest.raises(RemoteProtocolError):
        _open(b, a.seal(b"x", mtype=MsgType.DATA))
    with pytest.raises(CryptoError):
        make_aead("des", k)
    with pytest.raises(CryptoError):
        make_aead("aes-256-gcm", k[:16])


def test_repr_has_no_keys() -> None:
    k = os.urandom(32)
    kp = Keypair(local_index=1, remote_index=2, send_key=k, recv_key=k, initiator=True,
                 created=0)
    assert k.hex() not in repr(kp) and "Keypair(" in repr(kp)
