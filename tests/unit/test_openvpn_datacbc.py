"""CBC data ciphers in TLS mode: HMAC | IV | CBC(packet id (4 bytes) | payload), after the
DATA_V2 header, as openvpn_encrypt_v1 builds it."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from tunconnector.errors import RemoteProtocolError
from tunconnector.proto.openvpn.datav2 import DataKey
from tunconnector.proto.openvpn.keymethod import DirectionKeys

C2S = DirectionKeys(bytes(range(64)), bytes(range(64, 128)))
S2C = DirectionKeys(bytes(range(128, 192)), bytes(range(192, 256)))


@pytest.mark.parametrize(("cipher", "auth", "klen", "digest"), [
    ("AES-256-CBC", "SHA512", 32, "sha512"), ("AES-128-CBC", "SHA1", 16, "sha1"),
    ("AES-256-CBC", "SHA256", 32, "sha256"),
])
def test_wire_layout_and_round_trip(cipher: str, auth: str, klen: int, digest: str) -> None:
    client = DataKey(2, cipher, C2S, S2C, 7, 0.0, auth)
    server = DataKey(2, cipher, S2C, C2S, 7, 0.0, auth)
    payload = b"\x45" + bytes(99)
    wire = client.encrypt(payload)
    assert wire[:4] == bytes((9 << 3 | 2, 0, 0, 7))  # DATA_V2, key id 2, peer id 7
    hlen = hashlib.new(digest).digest_size
    tag, iv, ct = wire[4:4 + hlen], wire[4 + hlen:4 + hlen + 16], wire[4 + hlen + 16:]
    assert hmac.compare_digest(tag, hmac.digest(C2S.hmac[:hlen], iv + ct, digest))
    dec = Cipher(algorithms.AES(C2S.cipher[:klen]), modes.CBC(iv)).decryptor()
    plain = dec.update(ct) + dec.finalize()
    pad = plain[-1]
    assert plain[:4] == (1).to_bytes(4, "big") and plain[4:-pad] == payload
    assert server.decrypt(wire) == payload
    with pytest.raises(RemoteProtocolError) as exc:
        server.decrypt(wire)
    assert exc.value.reason == "replay"
    bad = bytearray(client.encrypt(payload))
    bad[-1] ^= 1
    with pytest.raises(RemoteProtocolError) as exc:
        server.decrypt(bytes(bad))
    assert exc.value.reason == "bad_hmac"
    # the reverse direction
    assert client.decrypt(server.encrypt(b"pong")) == b"pong"
