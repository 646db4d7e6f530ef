"""Noise handshakes: round trips and transcript interop with the noiseprotocol package."""

from __future__ import annotations

import warnings

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from tunconnector.errors import LocalProtocolError, RemoteProtocolError
from tunconnector.proto.noise import HandshakeState, public_bytes

noise_connection = pytest.importorskip("noise.connection", reason="needs noiseprotocol")
NoiseConnection = noise_connection.NoiseConnection
Keypair = noise_connection.Keypair


def _raw(k: X25519PrivateKey) -> bytes:
    return k.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def _fixed(seed: int) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(bytes([seed]) * 32)


PSK = bytes(range(32))
PROLOGUE = b"tunconnector native v1"


def _theirs(pattern: str, initiator: bool, eph: X25519PrivateKey, psk: bytes,
            s: X25519PrivateKey | None, rs: bytes | None) -> object:
    conn = NoiseConnection.from_name(f"Noise_{pattern}_25519_ChaChaPoly_BLAKE2s".encode())
    conn.set_psks(psk)
    conn.set_prologue(PROLOGUE)
    conn.set_as_initiator() if initiator else conn.set_as_responder()
    conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, _raw(eph))
    if s is not None:
        conn.set_keypair_from_private_bytes(Keypair.STATIC, _raw(s))
    if rs is not None:
        conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, rs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "fixed ephemeral: OK for testing"
        conn.start_handshake()
    return conn


@pytest.mark.parametrize("pattern", ["NNpsk0", "IKpsk2"])
@pytest.mark.parametrize("psk", [PSK, bytes(32)])
def test_interop_identical_messages_and_keys(pattern: str, psk: bytes) -> None:
    ei, er, si, sr = _fixed(1), _fixed(2), _fixed(3), _fixed(4)
    ik = pattern == "IKpsk2"
    mine_i = HandshakeState(pattern, initiator=True, prologue=PROLOGUE, psk=psk, ephemeral=ei,
                            static=si if ik else None,
                            remote_static=public_bytes(sr) if ik else None)
    mine_r = HandshakeState(pattern, initiator=False, prologue=PROLOGUE, psk=psk, ephemeral=er,
                            static=sr if ik else None)
    their_i = _theirs(pattern, True, ei, psk, si if ik else None,
                      public_bytes(sr) if ik else None)
    their_r = _theirs(pattern, False, er, psk, sr if ik else None, None)

    m1 = mine_i.write_message(b"init payload")
    assert m1 == bytes(their_i.write_message(b"init payload"))  # type: ignore[attr-defined]
    assert their_r.read_message(m1) == b"init payload"  # type: ignore[attr-defined]
    assert mine_r.read_message(m1) == b"init payload"
    if ik:
        assert mine_r.rs == public_bytes(si)
    m2 = mine_r.write_message(b"resp")
    assert m2 == bytes(their_r.write_message(b"resp"))  # type: ignore[attr-defined]
    assert their_i.read_message(m2) == b"resp"  # type: ignore[attr-defined]
    assert mine_i.read_message(m2) == b"resp"

    k1, k2 = mine_i.split()
    assert (k1, k2) == mine_r.split()
    proto = their_i.noise_protocol  # type: ignore[attr-defined]
    assert k1 == proto.cipher_state_encrypt.k
    assert k2 == proto.cipher_state_decrypt.k
    assert mine_i.handshake_hash == their_i.get_handshake_hash()  # type: ignore[attr-defined]


@pytest.mark.parametrize("pattern", ["NNpsk0", "IKpsk2"])
def test_wrong_psk_fails(pattern: str) -> None:
    si, sr = _fixed(3), _fixed(4)
    ik = pattern == "IKpsk2"
    a = HandshakeState(pattern, initiator=True, psk=PSK, static=si if ik else None,
                       remote_static=public_bytes(sr) if ik else None)
    b = HandshakeState(pattern, initiator=False, psk=bytes(32), static=sr if ik else None)
    m1 = a.write_message(b"x")
    if pattern == "NNpsk0":  # psk0 mixes the key before the first payload
        with pytest.raises(RemoteProtocolError):
            b.read_message(m1)
    else:  # psk2: the responder's message fails at the initiator
        b.read_message(m1)
        with pytest.raises(RemoteProtocolError):
            a.read_message(b.write_message(b"y"))


def test_ik_wrong_responder_static_fails() -> None:
    a = HandshakeState("IKpsk2", initiator=True, psk=PSK, static=_fixed(3),
                       remote_static=public_bytes(_fixed(9)))
    b = HandshakeState("IKpsk2", initiator=False, psk=PSK, static=_fixed(4))
    with pytest.raises(RemoteProtocolError):
        b.read_message(a.write_message(b""))


def test_truncated_and_misuse() -> None:
    a = HandshakeState("NNpsk0", initiator=True, psk=PSK)
    b = HandshakeState("NNpsk0", initiator=False, psk=PSK)
    m1 = a.write_message(b"")
    with pytest.raises(RemoteProtocolError):
        b.read_message(m1[:20])
    with pytest.raises(LocalProtocolError):
        a.write_message(b"")  # not our turn
    with pytest.raises(LocalProtocolError):
        a.split()
    with pytest.raises(LocalProtocolError):
        HandshakeState("XX", initiator=True)
    with pytest.raises(LocalProtocolError):
        HandshakeState("NNpsk0", initiator=True, psk=b"short")


def test_low_order_point_rejected() -> None:
    b = HandshakeState("NNpsk0", initiator=False, psk=PSK)
    a = HandshakeState("NNpsk0", initiator=True, psk=PSK)
    b.read_message(a.write_message(b""))
    m2 = bytearray(b.write_message(b""))
    m2[:32] = bytes(32)  # all-zero public key: ee DH is all zeros
    with pytest.raises(RemoteProtocolError):
        a.read_message(bytes(m2))


def test_repr_has_no_keys() -> None:
    a = HandshakeState("NNpsk0", initiator=True, psk=PSK)
    a.write_message(b"")
    text = repr(a) + repr(a.ss) + repr(a.ss.cs)
    assert PSK.hex() not in text and "ck" not in text
