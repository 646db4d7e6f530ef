"""Prometheus metrics, read from the node's live counters at scrape time.

The data path only bumps plain integers in its own stats objects; this collector turns
``node.status()`` (plus health monitors and API auth counters) into metric families when
``/metrics`` is scraped, so no prometheus object is ever touched per packet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

_PREFIX = "tunconnector_"
STATES = ("up", "down", "stopped")
HEALTH_STATES = ("OK", "NOT_OK", "UNKNOWN")
# per-tunnel counters: status key -> (metric suffix, help)
_TUNNEL_COUNTERS = {
    "rx_bytes": ("rx_bytes", "Bytes received from the peer (payload written to the device)"),
    "tx_bytes": ("tx_bytes", "Bytes sent to the peer (payload read from the device)"),
    "rx_packets": ("rx_packets", "Packets received from the peer"),
    "tx_packets": ("tx_packets", "Packets sent to the peer"),
    "handshakes": ("handshakes", "Completed cryptographic handshakes"),
    "rekeys": ("rekeys", "Session rekeys"),
    "failovers": ("failovers", "Active path changes (userspace multi-path)"),
}
_PATH_COUNTERS = ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets")
# per peer of a hub (label ``peer``): status key -> help
_PEER_COUNTERS = {
    "rx_bytes": "Bytes received from the peer",
    "tx_bytes": "Bytes sent to the peer",
    "rx_packets": "Packets received from the peer",
    "tx_packets": "Packets sent to the peer",
    "handshakes": "Completed handshakes with the peer",
}


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float):
        return float(v)
    return None


def _add(fam: GaugeMetricFamily | CounterMetricFamily, labels: list[str], value: Any) -> None:
    """One sample, only when the status value is a number: a missing key stays absent."""
    v = _num(value)
    if v is not None:
        fam.add_metric(labels, v)


def _gauge(name: str, helptext: str, *labels: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(_PREFIX + name, helptext, labels=list(labels))


def _counter(name: str, helptext: str, *labels: str) -> CounterMetricFamily:
    return CounterMetricFamily(_PREFIX + name, helptext, labels=list(labels))


class NodeCollector(Collector):
    """Builds every tunconnector metric family from callables evaluated per scrape."""

    def __init__(
        self,
        status: Callable[[], Iterable[Mapping[str, Any]]],
        health: Callable[[], Mapping[str, Mapping[str, Any]]] | None = None,
        auth: Any = None,
        version: str = "",
    ) -> None:
        self._status = status
        self._health = health
        self._auth = auth
        self._version = version

    def describe(self) -> Iterable[Any]:
        return []  # families depend on live data; skip describe-time collection

    def collect(self) -> Iterator[Any]:  # noqa: C901 - one flat pass over the snapshot
        try:
            tunnels = list(self._status())
        except Exception:  # a scrape must never crash the daemon
            log.exception("metrics: node.status() failed")
            tunnels = []
        health = dict(self._health()) if self._health else {}

        p = _PREFIX
        info = InfoMetricFamily(p + "build", "tunconnector version")
        info.add_metric([], {"version": self._version})
        yield info

        up = _gauge("tunnel_up", "1 when the tunnel's peer is alive", "tunnel")
        state = _gauge("tunnel_state", "Tunnel state (one series per state, 1 = current)",
                       "tunnel", "state")
        age = _gauge("tunnel_last_rx_age_seconds", "Seconds since the last packet from the peer",
                     "tunnel")
        counters = {
            key: _counter(suffix, helptext, "tunnel")
            for key, (suffix, helptext) in _TUNNEL_COUNTERS.items()
        }
        drops = _counter("drops", "Packets dropped, by reason", "tunnel", "reason")
        path_up = _gauge("path_up", "1 when the path is usable", "tunnel", "path")
        path_active = _gauge("path_active", "1 for the path carrying traffic", "tunnel", "path")
        path_rtt = _gauge("path_rtt_seconds", "Smoothed probe RTT of the path", "tunnel", "path")
        path_loss = _gauge("path_loss_ratio", "Recent probe loss on the path (0..1)",
                           "tunnel", "path")
        established = _gauge("session_established", "1 when an encrypted session is established",
                             "tunnel")
        session_age = _gauge("session_age_seconds", "Age of the current encrypted session",
                             "tunnel")
        path_counters = {
            key: _counter("path_" + key, f"Per path {key}", "tunnel", "path")
            for key in _PATH_COUNTERS
        }
        h_state = _gauge("health_state",
                         "Health check verdict (one series per state, 1 = current)",
                         "tunnel", "state")
        h_ok = _gauge("health_ok", "1 when the health check says OK", "tunnel")
        h_rtt = _gauge("health_rtt_seconds", "Mean echo RTT over the health window", "tunnel")
        hook_runs = _counter(
            "hook_runs", "Event hooks finished, by event and result (ok, failed, timeout, "
            "not_run, dropped)", "tunnel", "event", "result",
        )
        h_probes = _counter("health_probes", "Health probes by result", "tunnel", "result")

        peer_up = _gauge("peer_up", "1 when the hub's peer is alive", "tunnel", "peer")
        peer_hs_age = _gauge("peer_last_handshake_age_seconds",
                             "Seconds since the peer's last handshake", "tunnel", "peer")
        peer_counters = {
            key: _counter("peer_" + key, helptext, "tunnel", "peer")
            for key, helptext in _PEER_COUNTERS.items()
        }
        peer_drops = _counter("peer_drops", "Packets from or to the peer dropped, by reason",
                              "tunnel", "peer", "reason")

        for t in tunnels:
            name = str(t.get("name", ""))
            for pe in t.get("peers") or []:  # a hub: the same facts per peer
                pn = str(pe.get("name", ""))
                peer_up.add_metric([name, pn], 1.0 if pe.get("state") == "up" else 0.0)
                _add(peer_hs_age, [name, pn], pe.get("last_handshake_age"))
                for key, fam in peer_counters.items():
                    _add(fam, [name, pn], pe.get(key))
                for reason, n in sorted((pe.get("drops") or {}).items()):
                    _add(peer_drops, [name, pn, str(reason)], n)
            st = str(t.get("state", ""))
            up.add_metric([name], 1.0 if st == "up" else 0.0)
            for s in STATES:
                state.add_metric([name, s], 1.0 if st == s else 0.0)
            _add(age, [name], t.get("last_rx_age"))
            raw_crypto = t.get("crypto")
            crypto: Mapping[str, Any] = raw_crypto if isinstance(raw_crypto, Mapping) else {}
            for key, fam in counters.items():
                _add(fam, [name], t.get(key, crypto.get(key)))
            if crypto:
                established.add_metric([name], 1.0 if crypto.get("established") else 0.0)
                _add(session_age, [name], crypto.get("session_age"))
            for reason, n in sorted((t.get("drops") or {}).items()):
                _add(drops, [name, str(reason)], n)
            for path in t.get("paths") or []:
                pname = str(path.get("name", ""))
                pst = path.get("state")
                if pst is not None:
                    path_up.add_metric([name, pname], 1.0 if pst in ("up", True) else 0.0)
                _add(path_active, [name, pname], path.get("active"))
                _add(path_rtt, [name, pname], path.get("rtt"))
                _add(path_loss, [name, pname], path.get("loss"))
                for key, fam in path_counters.items():
                    _add(fam, [name, pname], path.get(key))
            hk = t.get("hooks")
            if isinstance(hk, Mapping):
                for event, counts in sorted(hk.items()):
                    if not isinstance(counts, Mapping):
                        continue
                    for result, n in sorted(counts.items()):
                        if result != "runs":
                            _add(hook_runs, [name, str(event), str(result)], n)
            hs = health.get(name) or t.get("health")
            if isinstance(hs, Mapping):
                cur = str(hs.get("state", "UNKNOWN"))
                for s in HEALTH_STATES:
                    h_state.add_metric([name, s], 1.0 if cur == s else 0.0)
                h_ok.add_metric([name], 1.0 if cur == "OK" else 0.0)
                _add(h_rtt, [name], hs.get("rtt_avg"))
                for res in ("answered", "lost"):
                    _add(h_probes, [name, res], hs.get(res))

        yield from (up, state, age, *counters.values(), drops, established, session_age)
        yield from (path_up, path_active, path_rtt, path_loss, *path_counters.values())
        yield from (h_state, h_ok, h_rtt, h_probes, hook_runs)
        yield from (peer_up, peer_hs_age, *peer_counters.values(), peer_drops)

        if self._auth is not None:
            lim = self._auth.limiter
            yield CounterMetricFamily(
                p + "api_auth_failures", "Failed API authentication attempts",
                value=lim.failures_total,
            )
            yield CounterMetricFamily(
                p + "api_auth_throttled", "API requests refused by the failed-auth rate limit",
                value=lim.throttled_total,
            )


def make_registry(collector: Collector, *, process: bool = True) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    if process:
        from prometheus_client.process_collector import ProcessCollector

        ProcessCollector(registry=reg)
    return reg


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
