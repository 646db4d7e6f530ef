#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian 12 machine (run as root): system packages + venv.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  iproute2 iputils-ping iperf3 socat nftables tcpdump   # labs, traffic, fault injection
  openvpn                                               # benchmark peer, comparisons
  qemu-system-x86 busybox-static cpio kmod              # kernel-bond tests in a QEMU VM
  python3-venv
  chromium                                              # the API's /docs page rendered offline (headless)
  podman runc debootstrap                               # container face: image built and run in tests
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/pip install -q -e '.[test]'
