#!/usr/bin/env bash
# Build the tunconnector image from this checkout with no registry and no PyPI in the build:
#   1. a Debian bookworm base image, built once with debootstrap and cached
#      (python3, python3-venv, iproute2; no compilers, no apt lists, no docs);
#   2. wheels of the checkout and its dependencies, built on the host (`pip wheel`);
#   3. the image from the Dockerfile with BASE=<that base> WHEELS=<those wheels>.
#
# Usage: scripts/container.sh [IMAGE]          (default image: localhost/tunconnector:latest)
# Environment:
#   TUNCONNECTOR_CONTAINER_CACHE  cache directory (default /var/cache/tunconnector)
#   TUNCONNECTOR_BASE_IMAGE       base image name (default localhost/tunconnector-base:bookworm)
#   DEBIAN_MIRROR                 debootstrap mirror (default: the first one apt uses here)
#   PYTHON                        interpreter whose pip builds the wheels (default: .venv's)
# Also writes $CACHE/containers.conf (runtime runc, lowered ulimits: what this kind of
# sandbox needs); point CONTAINERS_CONF at it to run the image with plain `podman run`.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${1:-localhost/tunconnector:latest}
CACHE=${TUNCONNECTOR_CONTAINER_CACHE:-/var/cache/tunconnector}
BASE=${TUNCONNECTOR_BASE_IMAGE:-localhost/tunconnector-base:bookworm}
SUITE=bookworm
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3

command -v podman >/dev/null || { echo "container.sh: podman is not installed" >&2; exit 3; }
mkdir -p "$CACHE"

conf="$CACHE/containers.conf"
if [ ! -f "$conf" ]; then
  cat >"$conf.tmp" <<'EOF'
# written by tunconnector's scripts/container.sh: crun fails on some kernels' cgroup
# set-up, and sandboxes forbid raising limits to podman's defaults
[containers]
default_ulimits = ["nofile=1024:4096", "nproc=1024:4096"]
[engine]
runtime = "runc"
EOF
  mv "$conf.tmp" "$conf"
fi
export CONTAINERS_CONF="$conf"

t0=$SECONDS
# -- 1. base (cached: the image, else its tarball, else debootstrap) ----------------------
if ! podman image exists "$BASE"; then
  tarball="$CACHE/base-$SUITE.tar"
  if [ ! -s "$tarball" ]; then
    mirror=${DEBIAN_MIRROR:-}
    if [ -z "$mirror" ]; then
      mirror=$(grep -hoE '^(URIs:|deb) +[^ ]+' /etc/apt/sources.list.d/*.sources \
                 /etc/apt/sources.list 2>/dev/null | grep -v security | awk '{print $2}' \
                 | grep -E '^https?://' | head -1 || true)
      mirror=${mirror:-http://deb.debian.org/debian}
    fi
    root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    trap 'rm -rf "$root"' EXIT
    echo "container.sh: debootstrap $SUITE from $mirror" >&2
    debootstrap --variant=minbase --include=python3,python3-venv,iproute2 \
      "$SUITE" "$root" "$mirror" >"$CACHE/debootstrap.log" 2>&1 \
      || { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
    # an image, not a system: no package lists, caches, docs or locales
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
      "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
      "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/tmp/*
    find "$root"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name 'locale.alias' \
      -exec rm -rf {} + 2>/dev/null || true
    tar -C "$root" --numeric-owner -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
    trap - EXIT
  fi
  podman import --quiet "$tarball" "$BASE" >/dev/null
fi
t1=$SECONDS

# -- 2. wheels of the checkout and its dependencies, built here --------------------------
mkdir -p build
wheels=$(mktemp -d build/container-wheels.XXXXXX)   # inside the build context
trap 'rm -rf "$wheels"' EXIT
if ! "$PY" -m pip wheel --wheel-dir "$wheels" . >"$CACHE/wheels.log" 2>&1; then
  tail -20 "$CACHE/wheels.log" >&2
  exit 1
fi
t2=$SECONDS

# -- 3. the image ------------------------------------------------------------------------
previous=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
podman build --quiet --format docker --layers=false \
  --build-arg BASE="$BASE" --build-arg WHEELS="$wheels" \
  -t "$IMAGE" -f Dockerfile . >/dev/null
t3=$SECONDS
current=$(podman image inspect --format '{{.Id}}' "$IMAGE")
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
  podman rmi "$previous" >/dev/null 2>&1 || true   # the replaced build, unless still in use
fi
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
echo "container.sh: $IMAGE built: $((size / 1000000)) MB;" \
  "base $((t1 - t0))s, wheels $((t2 - t1))s, image $((t3 - t2))s" >&2
