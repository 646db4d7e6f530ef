"""FRAGMENT datagrams: the sub-header and the reassembler (state kept across inputs, as
a tunnel keeps it across datagrams, reset now and then)."""

from __future__ import annotations

from tunconnector.proto import fragment

from ..registry import register

_state = {"reasm": fragment.Reassembler(), "n": 0, "now": 0.0}


def _seeds() -> list[bytes]:
    message = bytes(range(256)) * 20  # one 5 KB message in 1400-byte datagrams
    buf, stride, count = fragment.split(message, 7, 1400)
    return [bytes(buf[i * stride : (i + 1) * stride]) for i in range(count)]


@register("fragment.parse_fragment", seeds=lambda: [d[16:] for d in _seeds()])
def _parse(data: bytes) -> None:
    fragment.parse_fragment(data)


@register("fragment.reassembler", seeds=_seeds)
def _reassemble(data: bytes) -> None:
    _state["n"] += 1
    _state["now"] += 0.001
    if _state["n"] % 5000 == 0:
        _state["reasm"] = fragment.Reassembler()
    reasm = _state["reasm"]
    reasm.receive(data, _state["now"])
    reasm.handle_timer(_state["now"])
    if len(data) > 24:  # the same bytes as a GSO run of two datagrams
        reasm.receive_run(data + data, len(data), _state["now"])
