# tunconnector container image.
#
#   docker build -t tunconnector .
#   docker run -d --name tc --network host --cap-drop ALL --cap-add NET_ADMIN --cap-add NET_RAW \
#     --device /dev/net/tun -v /etc/tunconnector:/etc/tunconnector:ro \
#     -e API_USERNAME=admin -e API_PASSWORD=... tunconnector
#
# Config: mount a TOML file at /etc/tunconnector/tunconnector.toml (or pass another
# `run -c FILE`); API credentials from the environment (API_USERNAME/API_PASSWORD or
# API_TOKEN). The process runs as root *inside* the container because Docker cannot
# hand ambient capabilities to a non-root user; with only NET_ADMIN/NET_RAW added it has
# nothing else. To leave root after set-up as well, add --cap-add SETUID --cap-add SETGID
# and set [privileges] user = "tunconnector" (docs/operations.md).

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README* ./
COPY tunconnector ./tunconnector
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
LABEL org.opencontainers.image.title="tunconnector" \
      org.opencontainers.image.description="asyncio TUN/TAP tunnel daemon over UDP/TCP" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TUNCONNECTOR_CONTROL_DIR=/run/tunconnector \
    TUNCONNECTOR_HEALTH_URL=http://127.0.0.1:8000/livez
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --home-dir /var/lib/tunconnector --shell /usr/sbin/nologin tunconnector \
    && mkdir -p /etc/tunconnector /run/tunconnector /var/lib/tunconnector \
    && chown tunconnector:tunconnector /var/lib/tunconnector
VOLUME ["/etc/tunconnector"]
EXPOSE 8000/tcp
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['TUNCONNECTOR_HEALTH_URL'], timeout=4)"]
ENTRYPOINT ["tunconnector"]
CMD ["run", "-c", "/etc/tunconnector/tunconnector.toml"]
