"""What a client keeps of a PUSH_REPLY: ``pull-filter``, ``route-nopull``, and the
``route``/``route-ipv6`` lines of its own config.

``pull-filter accept|ignore|reject TEXT``: each pushed option (its words joined by one
space) is matched against the filters in order; the first whose TEXT starts the option
decides: ``accept`` keeps it, ``ignore`` drops it (logged), ``reject`` refuses the whole
reply (the session restarts), as openvpn. ``route-nopull`` drops pushed routes
(``route``, ``route-ipv6``, ``redirect-gateway``, ``redirect-private``), ``dhcp-option``
and ``block-outside-dns``. ``push-continuation`` is never filtered.
"""

from __future__ import annotations

import logging

log = logging.getLogger("tunconnector.openvpn")

ACTIONS = ("accept", "ignore", "reject")
NOPULL = ("route", "route-ipv6", "redirect-gateway", "redirect-private", "dhcp-option",
          "block-outside-dns")


def filter_pushed(options: list[list[str]], filters: list[tuple[str, str]],
                  route_nopull: bool) -> tuple[list[list[str]], str | None]:
    """(the options kept, the first rejected option's text or None)."""
    kept: list[list[str]] = []
    for opt in options:
        if not opt:
            continue
        text = " ".join(opt)
        if opt[0] == "push-continuation":
            kept.append(opt)
            continue
        action = "accept"
        for act, prefix in filters:
            if text.startswith(prefix):
                action = act
                break
        if action == "reject":
            return kept, text
        if action == "ignore":
            log.info("openvpn: pushed option ignored (pull-filter): %s", text[:200])
            continue
        if route_nopull and opt[0] in NOPULL:
            log.info("openvpn: pushed option ignored (route-nopull): %s", text[:200])
            continue
        kept.append(opt)
    return kept, None
