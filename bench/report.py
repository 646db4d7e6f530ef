"""Results as a Markdown table (ratios to the matching OpenVPN row), JSON and a PNG chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COLUMNS = [
    ("tcp1_gbps", "TCP x1 Gbit/s"),
    ("tcp4_gbps", "TCP x4 Gbit/s"),
    ("rtt_ms", "RTT ms"),
    ("udp64_kpps", "64 B kpps"),
]


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.3g}" if v < 10 else f"{v:.0f}" if v >= 100 else f"{v:.1f}"
    return str(v)


def ratio(row: dict[str, Any], base: dict[str, Any] | None, key: str) -> float | None:
    if base is None or row.get(key) is None or not base.get(key):
        return None
    return round(row[key] / base[key], 2)


def cpu_per_gb(row: dict[str, Any], seconds: float) -> float | None:
    """CPU seconds of the tunnel processes per GB moved in the 1-stream TCP test.

    Less sensitive than Gbit/s to other load on a shared machine: it is what one GB
    costs, whoever else wants the cores.
    """
    g, c = row.get("tcp1_gbps"), row.get("tcp1_gbps_cpu_s")
    if not g or c is None or not seconds or row.get("cpu_s") is None:
        return None
    return round(c / (g * seconds / 8), 2)


def row_summary(row: dict[str, Any]) -> str:
    if row.get("error"):
        return f"FAILED: {row['error']}"
    parts = [f"{label}={_fmt(row.get(key))}" for key, label in COLUMNS]
    parts.append(f"cpu={_fmt(row.get('cpu_s'))}s sha={_fmt(row.get('sha256_ok'))}")
    errs = [k for k in row if k.endswith("_error")]
    if errs:
        parts.append("errors: " + ", ".join(f"{k}={row[k]}" for k in errs))
    return " ".join(parts)


def markdown(results: dict[str, Any]) -> str:
    rows = results["peers"]
    by_name = {r["name"]: r for r in rows}
    secs = float(results.get("durations", {}).get("tcp", 0) or 0)
    for r in rows:
        r["cpu_s_per_gb"] = cpu_per_gb(r, secs)
    head = ["peer", *[label for _, label in COLUMNS], "x1 ratio", "x4 ratio", "pps ratio",
            "RTT ratio", "CPU s/GB", "CPU/GB ratio", "sha256"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['name']} | failed: {r['error'][:80]} |" + " |" * (len(head) - 2))
            continue
        base = by_name.get(r.get("baseline") or "")
        cells = [r["name"], *[_fmt(r.get(k)) for k, _ in COLUMNS]]
        for key in ("tcp1_gbps", "tcp4_gbps", "udp64_kpps", "rtt_ms"):
            x = ratio(r, base, key)
            cells.append(f"{x:.2f}x" if x is not None else "")
        x = ratio(r, base, "cpu_s_per_gb")
        cells += [_fmt(r.get("cpu_s_per_gb")), f"{x:.2f}x" if x is not None else "",
                  _fmt(r.get("sha256_ok"))]
        lines.append("| " + " | ".join(cells) + " |")
    m = results["machine"]
    text = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, kernel {m['kernel']}, "
        f"Python {m['python']}; {m['openvpn'].split(' [')[0]}, {m['iperf3']}; {m['date']}; "
        f"1-min load average {m.get('loadavg_at_start', '?')} at start, "
        f"{m.get('loadavg_at_end', '?')} at end (the machine is shared).",
        "",
        "Ratios compare each row with its OpenVPN counterpart (plaintext TUN rows with "
        "`ovpn-plain`, encrypted TUN rows with `ovpn-gcm`, TAP rows with `ovpn-tap`); "
        "RTT and CPU/GB ratios are lower-is-better. CPU s/GB is the user+system time of "
        "the tunnel processes per GB moved in the 1-stream test (kernel peers have "
        "none): unlike Gbit/s it hardly depends on other load on the machine.",
        "",
        *lines,
    ]
    sc = results.get("scale")
    if sc:
        text += ["", "Memory and idle cost (`tunconnector run -c`, UDP tunnels, server and "
                 "client daemons each in its own namespace):", ""]
        if "error" in sc:
            text.append(f"failed: {sc['error']}")
        else:
            text += ["| tunnels | server RSS MiB | client RSS MiB | server idle CPU % | "
                     "client idle CPU % |", "|---|---|---|---|---|"]
            for k in ("one", "many"):
                s = sc[k]
                text.append(f"| {s['tunnels']} | {s['server_rss_mib']} | {s['client_rss_mib']} "
                            f"| {s['server_idle_cpu_pct']} | {s['client_idle_cpu_pct']} |")
    text.append("")
    loss = f", underlay loss {results['loss_pct']:.1f}%" if results.get("loss_pct") else ""
    quick = " (quick)" if results.get("quick") else ""
    text.append(f"Total bench time: {results.get('total_seconds', 0):.0f} s{quick}{loss}.")
    return "\n".join(text) + "\n"


def png(results: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in results["peers"] if not r.get("error")]
    names = [r["name"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(14, max(4, 0.38 * len(rows) + 1.5)), sharey=True)
    ypos = list(range(len(rows)))
    colors = {"baseline": "#999999", "openvpn": "#d62728", "socat": "#ff7f0e",
              "tunconnector": "#1f77b4"}
    for ax, key, title in ((axes[0], "tcp1_gbps", "iperf3 TCP, 1 stream (Gbit/s)"),
                           (axes[1], "tcp4_gbps", "iperf3 TCP, 4 streams (Gbit/s)")):
        vals = [r.get(key) or 0 for r in rows]
        ax.barh(ypos, vals, color=[colors.get(r["kind"], "#333") for r in rows])
        for y, v in zip(ypos, vals, strict=True):
            ax.text(v, y, f" {v:.2f}", va="center", fontsize=8)
        ax.set_title(title)
        ax.set_xscale("symlog", linthresh=1)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(ypos, names)
    axes[0].invert_yaxis()
    m = results["machine"]
    fig.suptitle(f"tunconnector bench: {m['cores']} cores, kernel {m['kernel']}, {m['date']}"
                 + (" (quick)" if results.get("quick") else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_all(results: dict[str, Any], out: Path) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results))
    png(results, out / "results.png")
