"""Key generation and key files (permission check as ssh does)."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from tunconnector.errors import CryptoError
from tunconnector.keys import (
    channel_from_config,
    decode_key,
    generate_keypair,
    generate_psk,
    load_key_file,
    public_from_private,
    write_key_file,
)


def test_generate_psk() -> None:
    a, b = generate_psk(), generate_psk()
    assert a != b and len(base64.b64decode(a)) == 32


def test_generate_keypair_and_public() -> None:
    priv, pub = generate_keypair()
    assert len(decode_key(priv)) == 32 and len(decode_key(pub)) == 32
    assert public_from_private(priv) == pub
    assert public_from_private(decode_key(priv)) == pub


def _write(path: Path, text: str, mode: int) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_load_ok(tmp_path: Path) -> None:
    psk = generate_psk()
    p = _write(tmp_path / "k", psk + "\n", 0o600)
    assert load_key_file(p) == base64.b64decode(psk)
    assert load_key_file(_write(tmp_path / "k4", psk, 0o400)) == base64.b64decode(psk)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o666, 0o610])
def test_refuses_group_or_other_access(tmp_path: Path, mode: int) -> None:
    p = _write(tmp_path / "k", generate_psk(), mode)
    with pytest.raises(CryptoError, match=r"too open.*chmod 600") as exc:
        load_key_file(p)
    assert f"{mode:04o}" in str(exc.value)
    assert load_key_file(p, check_mode=False)


@pytest.mark.parametrize(
    "text, match",
    [
        ("not base64!!", "base64"),
        (base64.b64encode(b"x" * 16).decode(), "16 bytes, expected 32"),
        (base64.b64encode(b"x" * 33).decode(), "33 bytes"),
        ("", "0 bytes"),
    ],
)
def test_bad_contents(tmp_path: Path, text: str, match: str) -> None:
    p = _write(tmp_path / "k", text, 0o600)
    with pytest.raises(CryptoError, match=match) as exc:
        load_key_file(p)
    detail = str(exc.value).removeprefix(str(p))
    assert not text or text[:8] not in detail  # the key text is not echoed


def test_missing_and_not_regular(tmp_path: Path) -> None:
    with pytest.raises(CryptoError, match="cannot open"):
        load_key_file(tmp_path / "nope")
    d = tmp_path / "dir"
    d.mkdir(mode=0o700)
    with pytest.raises(CryptoError):
        load_key_file(d)


def test_write_key_file_mode(tmp_path: Path) -> None:
    p = tmp_path / "new.key"
    psk = generate_psk()
    write_key_file(p, psk)
    assert p.stat().st_mode & 0o777 == 0o600
    assert load_key_file(p) == base64.b64decode(psk)
    with pytest.raises(CryptoError, match="cannot create"):
        write_key_file(p, psk)  # never overwrite


def test_channel_from_config(tmp_path: Path) -> None:
    assert channel_from_config(SimpleNamespace(key_file=None, private_key_file=None)) is None
    psk_path = _write(tmp_path / "psk", generate_psk(), 0o600)
    ch = channel_from_config(SimpleNamespace(
        key_file=str(psk_path), private_key_file=None, mode="client",
        cipher="aes-256-gcm", rekey_after_time=5.0, rekey_after_bytes=1000))
    assert ch is not None and ch.pattern == "NNpsk0" and ch.initiator
    assert ch.cipher == "aes-256-gcm" and ch.rekey_after_time == 5.0
    priv, _ = generate_keypair()
    _, peer_pub = generate_keypair()
    priv_path = _write(tmp_path / "priv", priv, 0o600)
    ch = channel_from_config(SimpleNamespace(
        key_file=None, private_key_file=str(priv_path), peer_public_key=peer_pub,
        mode="server"))
    assert ch is not None and ch.pattern == "IKpsk2" and not ch.initiator
    assert priv not in repr(ch) and decode_key(priv).hex() not in repr(ch)


def test_cli_genkey(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tunconnector.cli import main

    assert main(["genkey"]) == 0
    assert len(decode_key(capsys.readouterr().out)) == 32
    priv_path = tmp_path / "priv.key"
    assert main(["genkey", "--keypair", str(priv_path)]) == 0
    pub = capsys.readouterr().out.strip()
    assert priv_path.stat().st_mode & 0o777 == 0o600
    assert public_from_private(load_key_file(priv_path)) == pub
    assert main(["genkey", "--public", str(priv_path)]) == 0
    assert capsys.readouterr().out.strip() == pub
    psk_path = tmp_path / "psk.key"
    assert main(["genkey", "-o", str(psk_path)]) == 0
    assert len(load_key_file(psk_path)) == 32
    os.chmod(psk_path, 0o640)
    assert main(["genkey", "--public", str(psk_path)]) == 1
    assert "too open" in capsys.readouterr().err
