"""Deployment artefacts: Kubernetes manifests render and validate, systemd units verify,
the Dockerfile is coherent, the shipped example configs load."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tunconnector.config import Config

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
SYSTEMD = ROOT / "deploy" / "systemd"
OVERLAYS = ["server", "client"]


def render(overlay: str) -> list[dict[str, Any]]:
    yaml = pytest.importorskip("yaml", reason="PyYAML (pip install pyyaml)")
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: cannot run `kubectl kustomize`")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kustomize_renders_and_validates(overlay: str) -> None:
    docs = render(overlay)
    kv = pytest.importorskip("kubernetes_validate",
                             reason="kubernetes-validate (pip install kubernetes-validate)")
    version = kv.latest_version()
    for d in docs:
        kv.validate(d, version, strict=True)
    assert {d["kind"] for d in docs} >= {"Namespace", "ServiceAccount", "ConfigMap", "DaemonSet"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_daemonset_shape(overlay: str) -> None:
    docs = render(overlay)
    (ds,) = by_kind(docs, "DaemonSet")
    assert ds["metadata"]["name"] == f"tunconnector-{overlay}"
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["nodeSelector"] == {"tunconnector.io/role": overlay}
    (c,) = pod["containers"]
    caps = c["securityContext"]["capabilities"]
    assert "NET_ADMIN" in caps["add"] and caps["drop"] == ["ALL"]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path and get["port"] == 8000 and get["host"] == "127.0.0.1"
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["dev-tun"]["hostPath"] == {"path": "/dev/net/tun", "type": "CharDevice"}
    assert vols["keys"]["secret"]["secretName"] == "tunconnector-key"
    cm_name = vols["config"]["configMap"]["name"]
    (cm,) = by_kind(docs, "ConfigMap")
    assert cm["metadata"]["name"] == cm_name  # hashed name wired through
    envs = {e["name"]: e for e in c["env"]}
    assert envs["API_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "tunconnector-api"
    # pod labels select the daemonset and differ between overlays
    sel = ds["spec"]["selector"]["matchLabels"]
    assert sel["app.kubernetes.io/instance"] == overlay
    assert all(ds["spec"]["template"]["metadata"]["labels"][k] == v for k, v in sel.items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_holds_a_valid_config(overlay: str) -> None:
    (cm,) = by_kind(render(overlay), "ConfigMap")
    cfg = Config.from_mapping(tomllib.loads(cm["data"]["tunconnector.toml"]))
    assert cfg.api is not None and cfg.api.listen.startswith("127.0.0.1:")
    assert len(cfg.tunnel) == 1 and cfg.tunnel[0].mode == overlay
    assert cfg.tunnel[0].health is not None


def test_overlay_configs_load_without_kubectl() -> None:
    for overlay in OVERLAYS:
        Config.from_toml(K8S / "overlays" / overlay / "tunconnector.toml")
    Config.from_toml(K8S / "base" / "tunconnector.toml")


def _verify_unit(
    tmp_path: Path, unit: Path, instance: str | None
) -> subprocess.CompletedProcess[str]:
    text = unit.read_text()
    # the unit names the installed path; point it at something executable here
    exe = shutil.which("tunconnector") or str(Path(sys.executable).with_name("tunconnector"))
    if not os.access(exe, os.X_OK):
        exe = "/bin/true"
    text = text.replace("/usr/local/bin/tunconnector", exe)
    dst = tmp_path / unit.name
    dst.write_text(text)
    target = dst
    if instance is not None:
        target = tmp_path / unit.name.replace("@.", f"@{instance}.")
        target.symlink_to(dst)
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(target)],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
    )


def test_systemd_units_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    units = sorted(SYSTEMD.glob("*.service")) + sorted(SYSTEMD.glob("*.timer"))
    assert units, "no units shipped"
    for unit in units:
        instance = "site" if "@." in unit.name else None
        r = _verify_unit(tmp_path, unit, instance)
        noise = [ln for ln in r.stderr.splitlines() if unit.name.split("@")[0] in ln]
        assert r.returncode == 0 and not noise, r.stderr


def test_systemd_unit_hardening() -> None:
    text = (SYSTEMD / "tunconnector@.service").read_text()
    keys: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            k, _, v = line.partition("=")
            keys.setdefault(k.strip(), []).append(v.strip())
    assert keys["CapabilityBoundingSet"] == ["CAP_NET_ADMIN CAP_NET_RAW"]
    assert keys["NoNewPrivileges"] == ["yes"]
    assert keys["ProtectSystem"] == ["strict"]
    assert keys["ExecStart"][0].endswith("run -c /etc/tunconnector/%i.toml")
    assert keys["User"] == ["tunconnector"]
    sysusers = (SYSTEMD / "tunconnector.sysusers.conf").read_text()
    assert re.search(r"^u tunconnector ", sysusers, re.M)


def test_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text()
    # registry users get python:3.11-slim; scripts/container.sh passes a local base
    assert re.search(r"^ARG BASE=python:3\.11-slim$", text, re.M)
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms and all(f == "${BASE}" for f in froms)
    assert re.search(r"^ARG WHEELS=$", text, re.M)
    assert '\nENTRYPOINT ["tunconnector"]' in text
    hc = re.search(r"^HEALTHCHECK [^\n]*\\\n\s*CMD (\[.*\])$", text, re.M)
    assert hc is not None
    cmd = json.loads(hc.group(1))
    assert cmd[:2] == ["python", "-c"]
    compile(cmd[2], "<healthcheck>", "exec")
    assert "TUNCONNECTOR_HEALTH_URL=http://127.0.0.1:8000/livez" in text
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for part in src.split():
            if "*" not in part:
                assert (ROOT / part).exists(), part
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignore and ".git" in ignore and "tunconnector" not in ignore
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["tunconnector"] == "tunconnector.cli:main"


def test_install_systemd_ships_the_same_units(tmp_path: Path) -> None:
    from tunconnector.install import SYSUSERS, main, render_unit

    assert render_unit() == (SYSTEMD / "tunconnector@.service").read_text()
    assert SYSUSERS == (SYSTEMD / "tunconnector.sysusers.conf").read_text()
    assert main(["--root", str(tmp_path), "--exec", "/opt/tc/bin/tunconnector"]) == 0
    unit = (tmp_path / "etc/systemd/system/tunconnector@.service").read_text()
    assert "ExecStart=/opt/tc/bin/tunconnector run -c /etc/tunconnector/%i.toml" in unit
    assert (tmp_path / "etc/sysusers.d/tunconnector.conf").read_text() == SYSUSERS
    assert (tmp_path / "etc/tunconnector").is_dir()


def test_privileges_config() -> None:
    from tunconnector.errors import ConfigError
    from tunconnector.privileges import cap_bits

    assert cap_bits(["CAP_NET_ADMIN", "net_raw"]) == (1 << 12) | (1 << 13)
    cfg = Config.from_mapping({"privileges": {"user": "nobody"}})
    assert cfg.privileges is not None
    assert cfg.privileges.keep_caps == ["CAP_NET_ADMIN", "CAP_NET_RAW"]
    with pytest.raises(ConfigError, match="keep_caps"):
        Config.from_mapping({"privileges": {"user": "x", "keep_caps": ["CAP_FLY"]}})
