"""Partial reassemblies expire on the tunnel's timer, not only when more fragments come.

A hostile pass left 59 partial messages pending 30 s after a 1 s timeout on an idle
server: the reassembler only looked at its clock when a new message started.
"""

from __future__ import annotations

from harness import PY, Env
from netns import ROOT, wait_for

SEND_FIRST_FRAGMENTS = """
import socket, sys
sys.path.insert(0, sys.argv[3])
from tunconnector.proto import fragment
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(59):  # the first fragment of 59 messages, the rest never sent
    buf, stride, count = fragment.split(bytes([i]) * 5000, 1000 + i, 1472)
    assert count > 1
    s.sendto(buf[:stride], (sys.argv[1], int(sys.argv[2])))
"""


def test_partial_reassemblies_expire_on_an_idle_server(env: Env) -> None:
    server = env.config_daemon(env.a, [{
        "name": "srv", "mode": "server", "device": "tc0", "port": 55557,
        "address": ["10.77.0.1/24"], "proto": "udp", "framing": "native"}], "server")
    server.wait_state("down", timeout=30.0)  # start-up: slow on a loaded machine
    env.b.run(PY, "-c", SEND_FIRST_FRAGMENTS, env.lab.a_addrs[0], "55557", str(ROOT))

    def expired() -> bool:
        fp = (server.tunnel() or {}).get("fastpath") or {}
        return fp.get("reassembly_expired") == 59 and fp.get("reassembly_pending") == 0

    # timeout 1 s after the first fragment; allow for a slow, shared machine
    assert wait_for(expired, timeout=10.0, interval=0.2), server.tunnel()["fastpath"]
    assert server.tunnel()["state"] == "down"  # strangers' fragments changed nothing else
