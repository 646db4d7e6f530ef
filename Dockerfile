# tunconnector container image.
#
#   docker build -t tunconnector .
#   docker run -d --name tc --network host --cap-drop ALL --cap-add NET_ADMIN --cap-add NET_RAW \
#     --device /dev/net/tun -v /etc/tunconnector:/etc/tunconnector:ro \
#     -e API_USERNAME=admin -e API_PASSWORD=... tunconnector
#
# Without a registry (or without PyPI), scripts/container.sh builds a Debian base with
# debootstrap, wheels of this checkout on the host, and then this file with
#   --build-arg BASE=<that base> --build-arg WHEELS=<wheel directory inside the context>
# The base needs python3 with the venv module and useradd (python:3.11-slim and
# Debian's python3 + python3-venv both have them).
#
# Config: mount a TOML file at /etc/tunconnector/tunconnector.toml (or pass another
# `run -c FILE`); API credentials from the environment (API_USERNAME/API_PASSWORD or
# API_TOKEN). The process runs as root *inside* the container because Docker cannot
# hand ambient capabilities to a non-root user; with only NET_ADMIN/NET_RAW added it has
# nothing else. To leave root after set-up as well, add --cap-add SETUID --cap-add SETGID
# and set [privileges] user = "tunconnector" (docs/operations.md).
#
# HEALTHCHECK asks the API's /livez, so it needs an [api] section (listen 127.0.0.1:8000
# by default; change TUNCONNECTOR_HEALTH_URL for another address). Podman keeps it only in
# `--format docker` images.

ARG BASE=python:3.11-slim

FROM ${BASE} AS build
# empty: build tunconnector and its dependencies from PyPI; else a directory of wheels
# in the build context, installed with no index at all
ARG WHEELS=
WORKDIR /src
COPY . .
RUN python3 -m venv /opt/tunconnector \
    && if [ -n "$WHEELS" ]; then \
         /opt/tunconnector/bin/pip install --no-cache-dir --no-index \
           --find-links "/src/$WHEELS" tunconnector; \
       else \
         /opt/tunconnector/bin/pip install --no-cache-dir /src; \
       fi \
    && /opt/tunconnector/bin/pip uninstall --yes --quiet pip setuptools wheel 2>/dev/null; \
    /opt/tunconnector/bin/tunconnector --version

FROM ${BASE}
LABEL org.opencontainers.image.title="tunconnector" \
      org.opencontainers.image.description="asyncio TUN/TAP tunnel daemon over UDP/TCP" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/tunconnector/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TUNCONNECTOR_CONTROL_DIR=/run/tunconnector \
    TUNCONNECTOR_HEALTH_URL=http://127.0.0.1:8000/livez
COPY --from=build /opt/tunconnector /opt/tunconnector
RUN useradd --system --uid 10001 --home-dir /var/lib/tunconnector --shell /usr/sbin/nologin tunconnector \
    && mkdir -p /etc/tunconnector /run/tunconnector /var/lib/tunconnector \
    && chown tunconnector:tunconnector /var/lib/tunconnector
VOLUME ["/etc/tunconnector"]
EXPOSE 8000/tcp
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['TUNCONNECTOR_HEALTH_URL'], timeout=4)"]
ENTRYPOINT ["tunconnector"]
CMD ["run", "-c", "/etc/tunconnector/tunconnector.toml"]
