"""``raw`` framing interop with a real QEMU NIC: a guest's ``-netdev dgram`` virtio NIC
wired to a tunconnector TAP on the host (in a namespace); ping both ways.

QEMU's dgram backend sends each Ethernet frame as one UDP datagram, nothing added: the
``raw`` framing. The guest needs no Python: a shell script configures its NIC, pings the
host's TAP, then waits (bounded) while the host pings it back.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tunconnector.testing.vm import VmResult, run_in_vm

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.privileged, pytest.mark.timeout(300)]

HOST_IP, GUEST_IP = "10.77.0.1", "10.77.0.2"

GUEST_SCRIPT = """\
set -u
S="$1"
dev=""
for d in /sys/class/net/*; do n=${d##*/}; [ "$n" = lo ] || { dev=$n; break; }; done
echo "guest nic: $dev" > "$S/guest.txt"
ip addr add %(guest)s/24 dev "$dev" && ip link set "$dev" up
ping -n -c 5 -i 0.2 -W 2 %(host)s >> "$S/guest.txt" 2>&1
echo "rc=$?" >> "$S/guest.txt"
touch "$S/guest-ready"
i=0
while [ ! -e "$S/host-done" ] && [ $i -lt 300 ]; do sleep 0.2; i=$((i+1)); done
"""


def _sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=60)


def test_raw_udp_with_qemu_dgram_nic(vm_ready: None, tmp_path: Path) -> None:
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 for a network namespace")
    tag = secrets.token_hex(3)
    ns, dev = f"tcq{tag}", f"tq{tag}"
    host_port, guest_port = 7001, 7002
    share = tmp_path / "share"
    share.mkdir()
    (share / "guest.sh").write_text(GUEST_SCRIPT % {"guest": GUEST_IP, "host": HOST_IP})
    conf = tmp_path / "raw.toml"
    conf.write_text(
        f'control_dir = "{tmp_path}/ctl"\n[[tunnel]]\nname = "qemu"\nmode = "client"\n'
        f'dev_type = "tap"\ndevice = "{dev}"\naddress = ["{HOST_IP}/24"]\nframing = "raw"\n'
        f'bind = "127.0.0.1"\nport = {host_port}\nremote = "127.0.0.1"\n'
        f'remote_port = {guest_port}\noffload = "off"\n'
    )
    _sh("ip", "netns", "add", ns)
    daemon = None
    try:
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
        log = (tmp_path / "daemon.log").open("wb")
        daemon = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns,
                sys.executable,  # the environment running the tests, not a checkout venv
                "-m",
                "tunconnector",
                "run",
                "-c",
                str(conf),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while _sh("ip", "-n", ns, "link", "show", dev, check=False).returncode != 0:
            assert time.monotonic() < deadline, (tmp_path / "daemon.log").read_text()
            time.sleep(0.1)
        result: list[VmResult] = []
        netdev = (
            f"dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port={guest_port},"
            f"remote.type=inet,remote.host=127.0.0.1,remote.port={host_port}"
        )
        guest = threading.Thread(
            target=lambda: result.append(
                run_in_vm(
                    ["/bin/sh", str(share / "guest.sh"), str(share)],
                    180,
                    share,
                    wrapper=["ip", "netns", "exec", ns],
                    extra_qemu_args=["-netdev", netdev, "-device", "virtio-net-pci,netdev=n0"],
                    modules=("virtio_net",),
                )
            ),
            daemon=True,
        )
        guest.start()
        deadline = time.monotonic() + 170
        while not (share / "guest-ready").exists():
            assert guest.is_alive() and time.monotonic() < deadline, (
                result[0].describe() if result else "guest never got ready"
            )
            time.sleep(0.2)
        back = _sh(
            "ip",
            "netns",
            "exec",
            ns,
            "ping",
            "-n",
            "-c",
            "5",
            "-i",
            "0.2",
            "-W",
            "2",
            GUEST_IP,
            check=False,
        )
        (share / "host-done").touch()
        guest.join(timeout=120)
        assert result and result[0].returncode == 0, result[0].describe() if result else ""
        guest_side = (share / "guest.txt").read_text()
        assert " 0% packet loss" in guest_side, guest_side
        assert " 0% packet loss" in back.stdout, back.stdout + back.stderr
        print(f"guest -> host and host -> guest: 5/5 each; boot {result[0].boot_seconds:.1f}s")
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()
        _sh("ip", "netns", "del", ns, check=False)
