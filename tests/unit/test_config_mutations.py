"""Hostile configuration: values that pass a naive check and hurt at run time, and 3,000
mutated copies of the shipped examples. Every one must end in exit 0 or exit 2 with a
message starting with a key path (or the file's path for a TOML syntax error), never in
a traceback."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import random
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tunconnector.cli import main
from tunconnector.config import Config
from tunconnector.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))
SEED = 0x7C0FF1
COUNT = 3000
GOOD = {"name": "a", "mode": "client", "remote": "192.0.2.1", "address": "10.0.0.2"}
# a key path: tunnel[0].path[1].weight, api.auth_window, log_level ...
_SEGMENT = r"""(?:[\w-]+|'[^']*'|"[^"]*")(?:\[\d+\])*"""
KEY_PATH = re.compile(rf"^{_SEGMENT}(?:\.{_SEGMENT})*: ")


def tunnel(**kw: Any) -> dict[str, Any]:
    return {"tunnel": [{**GOOD, **kw}]}


# -- the values a hostile pass found ----------------------------------------------------
HURTFUL = [
    (tunnel(keepalive=math.nan), "tunnel[0].keepalive"),
    (tunnel(keepalive=1e-300), "tunnel[0].keepalive"),
    (tunnel(keepalive=math.inf, dead_after=math.inf), "tunnel[0].keepalive"),
    (tunnel(dead_after=math.nan), "tunnel[0].dead_after"),
    (tunnel(rekey_after_bytes=-1), "tunnel[0].rekey_after_bytes"),
    (tunnel(rekey_after_bytes=0), "tunnel[0].rekey_after_bytes"),
    (tunnel(rekey_after_time=math.nan), "tunnel[0].rekey_after_time"),
    (tunnel(rekey_after_time=math.inf), "tunnel[0].rekey_after_time"),
    (tunnel(rekey_after_time=1e-300), "tunnel[0].rekey_after_time"),
    (tunnel(loss_threshold=math.nan), "tunnel[0].loss_threshold"),
    (tunnel(loss_threshold=math.inf), "tunnel[0].loss_threshold"),
    (tunnel(loss_threshold=-0.5), "tunnel[0].loss_threshold"),
    (tunnel(probe_interval=math.nan), "tunnel[0].probe_interval"),
    (tunnel(failback_delay=math.inf), "tunnel[0].failback_delay"),
    (tunnel(path=[{"name": "p", "remote": "192.0.2.1", "weight": math.nan}]),
     "tunnel[0].path[0].weight"),
    (tunnel(path=[{"name": "p", "remote": "192.0.2.1", "weight": math.inf}]),
     "tunnel[0].path[0].weight"),
    (tunnel(health={"target": "10.0.0.1", "interval": math.nan}), "tunnel[0].health.interval"),
    (tunnel(health={"target": "10.0.0.1", "timeout": math.inf}), "tunnel[0].health.timeout"),
    (tunnel(health={"target": "10.0.0.1", "threshold": math.nan}),
     "tunnel[0].health.threshold"),
    (tunnel(port="²"), "tunnel[0].port"),
    (tunnel(port="٣"), "tunnel[0].port"),
    (tunnel(remote_port="9" * 40), "tunnel[0].remote_port"),
    (tunnel(name="a\n"), "tunnel[0].name"),
    (tunnel(device="tun0\n"), "tunnel[0].device"),
    ({"api": {"auth_window": math.nan}}, "api.auth_window"),
    ({"api": {"auth_window": math.inf}}, "api.auth_window"),
    ({"api": {"listen": "127.0.0.1:²"}}, "api.listen"),
    ({"bond": [{"role": "server", "bridge_ip": "10.0.0.1", "keepalive": math.nan}]},
     "bond[0].keepalive"),
    ({"bond": [{"role": "server", "bridge_ip": "10.0.0.1", "failover_after": math.inf}]},
     "bond[0].failover_after"),
]


@pytest.mark.parametrize("data,where", HURTFUL, ids=[w for _, w in HURTFUL])
def test_hurtful_values_are_refused_with_the_key_path(data: dict[str, Any], where: str) -> None:
    with pytest.raises(ConfigError) as ei:
        Config.from_mapping(data)
    assert str(ei.value).startswith(where + ":"), str(ei.value)


def test_deep_nesting_is_a_config_error(tmp_path: Path) -> None:
    p = tmp_path / "deep.toml"
    p.write_text("[[tunnel]]\nname = \"a\"\naddress = " + "[" * 20000 + "]" * 20000 + "\n")
    with pytest.raises(ConfigError, match="nested too deep"):
        Config.from_toml(p)


def test_error_messages_do_not_echo_long_input() -> None:
    with pytest.raises(ConfigError) as ei:
        Config.from_mapping(tunnel(mode="x" * 1_000_000))
    assert len(str(ei.value)) < 200


@pytest.mark.parametrize("flags,where", [
    (["--keepalive", "nan"], "tunnel[0].keepalive"),
    (["--keepalive", "1e-300"], "tunnel[0].keepalive"),
    (["--dead-after", "inf"], "tunnel[0].dead_after"),
    (["-i", "70000"], "tunnel[0].port"),
])
def test_cli_flags_are_range_checked(flags: list[str], where: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["-m", "server", "-s", "10.0.0.1/24", "--check", *flags])
    assert rc == 2
    assert f"config error: {where}:" in capsys.readouterr().err


def test_check_subcommand_and_run_check(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    good = str(ROOT / "examples" / "server.toml")
    assert main(["check", "-c", good]) == 0
    assert main(["run", "-c", good, "--check"]) == 0
    assert "valid (1 tunnel(s))" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('[[tunnel]]\nname = "a"\nkeepalive = nan\n')
    assert main(["check", "-c", str(bad)]) == 2
    assert "tunnel[0].keepalive:" in capsys.readouterr().err


def test_check_understands_an_ovpn_file(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    kpem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()
    ovpn = tmp_path / "site.ovpn"
    ovpn.write_text("client\ndev tun\nproto udp\nremote 192.0.2.9 1194\n"
                    f"<ca>\n{pem}</ca>\n<cert>\n{pem}</cert>\n<key>\n{kpem}</key>\n")
    assert main(["check", "-c", str(ovpn)]) == 0
    assert "site.ovpn: valid (1 tunnel(s))" in capsys.readouterr().out
    ovpn.write_text("client\nremote a\nfragment 1300\n")
    assert main(["check", "-c", str(ovpn)]) == 2
    err = capsys.readouterr().err
    assert "not valid TOML" not in err and "openvpn_config" in err, err


# -- 3,000 mutated examples ---------------------------------------------------------------
class Raw:
    """TOML text inserted as is (deep nesting, dates): values a dict cannot carry."""

    def __init__(self, text: str) -> None:
        self.text = text


NASTY: list[Any] = [
    math.nan, math.inf, -math.inf, -1, 0, 1, -0.0, 1e-300, 1e300, 2**63 - 1, -(2**63),
    0.5, 65535, 65536, 1 << 40, "", " ", "²", "٣", "0x10", "-1", "1e3", "nan", "55556 ",
    "tun0\n", "x" * 5000, "10.0.0.300/24", "::1", "fd00::1/129", "eth0/x", "é", "\x00",
    True, False, [], [1, "a"], [[]], {}, {"name": "x"}, {"bogus": 1}, [{"name": "p"}],
    Raw("1979-05-27T07:32:00Z"), Raw("[" * 400 + "]" * 400), Raw("[" * 20000 + "]" * 20000),
    Raw("{a = " * 300 + "1" + "}" * 300),
]


def nasty(rng: random.Random) -> Any:
    return copy.deepcopy(rng.choice(NASTY))  # a fresh copy: mutations must not alias


def toml_value(v: Any) -> str:
    if isinstance(v, Raw):
        return v.text
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # JSON escapes are TOML basic-string escapes
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(x)}"
                               for k, x in v.items()) + "}"
    raise TypeError(type(v))


def to_toml(data: dict[str, Any]) -> str:
    return "".join(f"{json.dumps(str(k))} = {toml_value(v)}\n" for k, v in data.items())


def containers(node: Any, out: list[Any]) -> list[Any]:
    """Every dict and list in the tree (the places a mutation can land)."""
    if isinstance(node, dict | list):
        out.append(node)
        for child in (node.values() if isinstance(node, dict) else node):
            containers(child, out)
    return out


def mutate(rng: random.Random, data: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        spots = containers(data, [])
        spot = rng.choice(spots)
        op = rng.random()
        if isinstance(spot, list):
            if not spot or op < 0.2:
                spot.append(nasty(rng))
            elif op < 0.4:
                spot.append(copy.deepcopy(rng.choice(spot)))  # duplicate a tunnel, a path
            elif op < 0.55:
                spot.pop(rng.randrange(len(spot)))
            else:
                spot[rng.randrange(len(spot))] = nasty(rng)
            continue
        if not spot or op < 0.1:
            spot[rng.choice(keys + ["bogus"])] = nasty(rng)
        elif op < 0.25:
            spot.pop(rng.choice(list(spot)))
        elif op < 0.4:  # a real key with another key's value: type confusion
            k = rng.choice(list(spot))
            spot[k] = copy.deepcopy(rng.choice(list(spot.values())))
        elif op < 0.55 and any(isinstance(v, int | float) for v in spot.values()):
            k = rng.choice([k for k, v in spot.items() if isinstance(v, int | float)])
            v = spot[k]
            spot[k] = rng.choice([-v, v * 1e6, v / 1e9, v + 1, v - 1, 0, -1, str(v)])
        else:
            spot[rng.choice(list(spot))] = nasty(rng)
    return data


def mutated_texts(count: int) -> list[str]:
    rng = random.Random(SEED)
    bases = [tomllib.loads(p.read_text()) for p in EXAMPLES]
    keys = sorted({k for b in bases for c in containers(b, []) if isinstance(c, dict)
                   for k in c})
    out: list[str] = []
    for _ in range(count):
        text = to_toml(mutate(rng, rng.choice(bases), keys))
        if rng.random() < 0.1:  # and some byte-level damage for the TOML parser
            b = bytearray(text.encode())
            for _ in range(rng.randint(1, 4)):
                if b:
                    b[rng.randrange(len(b))] = rng.randrange(256)
            text = b.decode("utf-8", "replace")
        out.append(text)
    return out


def check_outcome(rc: int, err: str, path: str, text: str) -> None:
    assert "Traceback" not in err, f"traceback for:\n{text[:2000]}\n{err}"
    assert rc in (0, 2), f"exit {rc} for:\n{text[:2000]}\n{err}"
    if rc == 2:
        msg = err.removeprefix("tunconnector: config error: ")
        assert KEY_PATH.match(msg) or msg.startswith(path + ":"), f"no key path: {err!r}"
        assert len(err) < 2000, "the message echoes the input"


def test_mutated_examples_exit_0_or_2_with_a_key_path(tmp_path: Path) -> None:
    assert EXAMPLES, "examples/*.toml missing"
    texts = mutated_texts(COUNT)
    path = str(tmp_path / "m.toml")
    outcomes = {0: 0, 2: 0}
    for i, text in enumerate(texts):
        err = io.StringIO()
        if i % 10 == 0:  # one in ten through the CLI's main(), the rest through the loader
            Path(path).write_text(text)
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                rc = main(["check", "-c", path])
        else:
            try:
                Config.from_toml_bytes(text.encode(), path)
                rc = 0
            except ConfigError as exc:
                rc = 2
                err.write(f"tunconnector: config error: {exc}\n")
        check_outcome(rc, err.getvalue(), path, text)
        outcomes[rc] += 1
    # the mutations must mostly hit validation, not all fall over at the parser
    assert outcomes[2] > COUNT // 2 and outcomes[0] > 0, outcomes


def test_mutated_sample_through_the_real_cli(tmp_path: Path) -> None:
    """A sample through a fresh interpreter, both entry points, as an operator runs them."""
    texts = mutated_texts(COUNT)[::500]
    for i, text in enumerate(texts):
        path = str(tmp_path / f"s{i}.toml")
        Path(path).write_text(text)
        args = ["check", "-c", path] if i % 2 else ["run", "-c", path, "--check"]
        proc = subprocess.run([sys.executable, "-m", "tunconnector", *args],
                              capture_output=True, text=True, timeout=60)
        check_outcome(proc.returncode, proc.stderr, path, text)
