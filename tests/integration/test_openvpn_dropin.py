"""tunconnector as the ``openvpn`` binary of PEERING's client tooling, against a real
openvpn 2.6 TAP server (IPv4 and IPv6 pushed, AES-128-GCM) in a namespace.

PEERING's client (github.com/PEERINGTestbed/client) cannot be fetched at test time, so
its openvpn part is reproduced here as it drives openvpn, kept to what it does:

- ``peering openvpn up MUX``: ``openvpn --cd "$progdir" --config configs/openvpn/MUX.conf``
  must daemonize and return 0;
- liveness: ``echo quit | socat - UNIX:var/MUX.sock`` (the management interface), then the
  first line of ``var/MUX.updown``, which its ``up.sh`` writes;
- ``peering openvpn down MUX``: ``echo "signal SIGTERM" | socat - UNIX:var/MUX.sock``,
  then it removes the pid, socket and updown files;
- ``scripts/openvpn/up.sh``/``down.sh`` run under ``set -eu`` with openvpn's six
  positional arguments, ``ifconfig_ipv6_local`` and ``daemon_name`` (from ``setenv``).

The generated config (``configs/openvpn/amsterdam01.conf``) is PEERING's, verbatim but for
the mux address. ``openvpn`` on PATH is tunconnector's ``tunconnector-openvpn``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netns import wait_for  # noqa: E402
from peering import peering_client_config  # noqa: E402
from test_openvpn_tls_interop import (  # noqa: E402
    SERVER_IP,
    Lab,
    Pki,
    _lab,
    pki,  # noqa: E402,F401 - the module's PKI fixture
)

pytestmark = [
    pytest.mark.openvpn,
    pytest.mark.skipif(shutil.which("openvpn") is None, reason="needs the openvpn binary"),
    pytest.mark.skipif(shutil.which("socat") is None, reason="needs socat"),
]

MUX = "amsterdam01"

# -- PEERING's files, reproduced -------------------------------------------------------
CONF = peering_client_config(MUX, SERVER_IP)

UP_SH = """\
#!/bin/sh
set -eu

dev=$1
dev_mtu=$2
link_mtu=$3
local_ip=$4
remote_ip=$5
init_restart=$6

echo "cmdline $*" >> var/up-down.log
set >> var/up-down.log

# Performance tuning
ip link set "$dev" txqueuelen 20000
tc qdisc replace dev "$dev" root pfifo limit 25000

echo "up $local_ip $ifconfig_ipv6_local" > "var/$daemon_name.updown"
"""

DOWN_SH = """\
#!/bin/sh
set -eu

dev=$1
dev_mtu=$2
link_mtu=$3
local_ip=$4
remote_ip=$5
init_restart=$6

echo "down $1 $2 $3 $4 $5 $6" >> var/up-down.log
echo "down" > "var/$daemon_name.updown"
"""

# scripts/peering-config + scripts/peering-openvpn (up, down, status), as they drive openvpn
PEERING = r"""#!/bin/bash
set -eu
progdir=$(cd "$(dirname "$0")" && pwd -P)
varrun="$progdir/var"
openvpn_cfgs="$progdir/configs/openvpn"
mux2dev_db="$varrun/mux2dev.txt"
term () { echo "$1" ; exit 0 ; }
die () { echo "$1" ; exit 1 ; }
mkdir -p "$varrun"
if [ ! -s "$mux2dev_db" ] ; then
    for fn in "$openvpn_cfgs"/*.conf ; do
        name=$(basename "$fn")
        name=${name%%.conf}
        echo -n "$name " >> "$mux2dev_db"
        grep -Ee "^dev " "$fn" | cut -d " " -f 2 >> "$mux2dev_db"
    done
fi
declare -A mux2dev
while read -r fmux fdev ; do mux2dev[$fmux]=$fdev ; done < "$mux2dev_db"

mux_status_check() {
    local mux=$1
    local dev=${mux2dev[$mux]:-unset}
    test "$dev" != unset || die "error [mux $mux unknown]"
    if ! echo quit | socat - "UNIX:$varrun/$mux.sock" &> /dev/null ; then
        rm -f "$varrun/$mux.pid"
        rm -f "$varrun/$mux.sock"
        rm -f "$varrun/$mux.updown"
        mstat="down"
        return
    fi
    local statfn="$varrun/$mux.updown"
    if [ ! -s "$statfn" ] ; then
        echo "OpenVPN status files in inconsistent state [$statfn missing]"
        mstat="up 0.0.0.0 ::1 [$statfn missing]"
    else
        mstat=$(head -n 1 "$statfn")
    fi
}

test "$1" = openvpn || die "only 'peering openvpn' is reproduced here"
shift
case $1 in
up)
    mux=$2
    mux_status_check "$mux"
    if [[ $mstat =~ ^up.*$ ]] ; then term "tunnel $mux already up" ; fi
    if ! openvpn --cd "$progdir" --config "$openvpn_cfgs/$mux.conf" ; then
        die "openvpn did not start correctly, please check logs"
    fi
    ;;
down)
    mux=$2
    mux_status_check "$mux"
    if [[ $mstat =~ ^down$ ]] ; then term "tunnel $mux already down" ; fi
    echo "signal SIGTERM" | socat - "UNIX:$varrun/$mux.sock" > /dev/null
    rm -f "$varrun/$mux.pid"
    rm -f "$varrun/$mux.sock"
    rm -f "$varrun/$mux.updown"
    ;;
status)
    for mux in "${!mux2dev[@]}" ; do
        mux_status_check "$mux"
        echo "$mux ${mux2dev[$mux]} $mstat"
    done | sort
    ;;
esac
"""


@pytest.fixture
def ovlab(pki: Pki, tmp_path: Path) -> Iterator[Lab]:  # noqa: F811
    with _lab(pki, tmp_path) as lb:
        yield lb


def _openvpn_on_path(bindir: Path) -> None:
    """``openvpn`` is tunconnector: the console script symlinked (docs/openvpn.md), or
    ``python -m tunconnector openvpn`` where no console script is installed."""
    bindir.mkdir()
    script = Path(sys.executable).parent / "tunconnector-openvpn"
    target = bindir / "openvpn"
    if script.exists() and not os.environ.get("TUNCONNECTOR_VENV_BIN"):
        target.symlink_to(script)
    else:
        venv = os.environ.get("TUNCONNECTOR_VENV_BIN")
        exe = f"{venv}/tunconnector-openvpn" if venv else \
            f"{sys.executable} -m tunconnector openvpn"
        target.write_text(f'#!/bin/sh\nexec {exe} "$@"\n')
        target.chmod(0o755)


def _peering_tree(lab: Lab) -> Path:
    root = lab.dir / "peering-client"
    for sub in ("certs", "configs/openvpn", "scripts/openvpn", "var"):
        (root / sub).mkdir(parents=True)
    p = lab.pki.files
    shutil.copy(p["ca.crt"], root / "certs/ca.crt")
    shutil.copy(p["client1.crt"], root / "certs/client.crt")
    shutil.copy(p["client1.key"], root / "certs/client.key")
    (root / f"configs/openvpn/{MUX}.conf").write_text(CONF)
    for name, text in (("scripts/openvpn/up.sh", UP_SH),
                       ("scripts/openvpn/down.sh", DOWN_SH), ("peering", PEERING)):
        (root / name).write_text(text)
        (root / name).chmod(0o755)
    _openvpn_on_path(lab.dir / "bin")
    return root


def _peering(lab: Lab, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = [f"PATH={lab.dir / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
           f"TUNCONNECTOR_CONTROL_DIR={lab.dir / 'ctl'}"]
    return lab.c1.run("env", *env, str(root / "peering"), *args, check=False, timeout=90)


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaps, as under a container's init, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow
def test_peering_client_tooling_drives_tunconnector(ovlab: Lab) -> None:
    lab = ovlab
    lab.start_server(dev="tap", mode="server 10.8.0.0 255.255.255.0\n"
                     "server-ipv6 fd00:8::/64\n", extra="data-ciphers AES-128-GCM\n")
    root = _peering_tree(lab)
    var = root / "var"

    res = _peering(lab, root, "openvpn", "up", MUX)
    assert res.returncode == 0, res.stdout + res.stderr + _text(var / f"{MUX}.log")
    pid = int((var / f"{MUX}.pid").read_text())
    assert _alive(pid) and (var / f"{MUX}.sock").exists()
    # up.sh ran with openvpn's arguments and environment, under set -eu
    assert wait_for(lambda: _text(var / f"{MUX}.updown").startswith("up 10.8.0."), 40), \
        _text(var / f"{MUX}.log") + _text(var / "up-down.log")
    updown = _text(var / f"{MUX}.updown").split()
    assert updown[0] == "up" and updown[2].startswith("fd00:8::"), updown
    local4, local6 = updown[1], updown[2]
    log = _text(var / "up-down.log")
    assert f"cmdline tap5 1500 1549 {local4} 255.255.255.0 init" in log, log
    assert f"daemon_name='{MUX}'" in log and "script_type='up'" in log, log
    link = lab.c1.run("ip", "-d", "link", "show", "tap5").stdout
    assert "qlen 20000" in link and "pfifo" in lab.c1.run("tc", "qdisc", "show", "dev",
                                                          "tap5").stdout

    res = _peering(lab, root, "openvpn", "status")
    assert res.stdout.strip() == f"{MUX} tap5 up {local4} {local6}", res.stdout + res.stderr
    assert lab.c1.wait_ping("10.8.0.1", 15)
    # IPv6 through the tap (bounded: the address is tentative until DAD ends)
    assert lab.c1.wait_ping("fd00:8::1", 15), lab.c1.run("ip", "-6", "addr").stdout
    # the default mssfix on a TAP tunnel: the MSS openvpn's own client gives SYNs
    from tunconnector.proto.openvpn.mss import mss_value

    shutil.copy(lab.pki.files["client2.crt"], root / "certs/client2.crt")
    shutil.copy(lab.pki.files["client2.key"], root / "certs/client2.key")
    (root / "real.conf").write_text(  # openvpn itself, in the foreground, as client2
        CONF.replace("certs/client.", "certs/client2.")
        .replace(f"daemon {MUX}\n", "").replace(f"management var/{MUX}.sock unix\n", "")
        .replace(f"log var/{MUX}.log\n", "").replace(f"writepid var/{MUX}.pid\n", "")
        .replace("up scripts/openvpn/up.sh\n", "").replace("down scripts/openvpn/down.sh\n",
                                                           ""))
    _same_mss_as_openvpn(lab, root, "real.conf", "tap0", args=(),
                         want=mss_value(mssfix=1492, tap=True, cipher="AES-128-GCM"))
    # the management interface as PEERING and GUIs speak it, through socat
    state = lab.c1.run("socat", "-", f"UNIX:{var / (MUX + '.sock')}", input="state\nquit\n")
    lines = state.stdout.splitlines()
    assert lines[0].startswith(">INFO:OpenVPN Management Interface Version")
    assert f",CONNECTED,SUCCESS,{local4},{SERVER_IP},1194,,,{local6}" in lines[1], lines
    assert "Initialization Sequence Completed" in _text(var / f"{MUX}.log")

    res = _peering(lab, root, "openvpn", "down", MUX)
    assert res.returncode == 0, res.stdout + res.stderr
    assert wait_for(lambda: not _alive(pid), 20), _text(var / f"{MUX}.log")
    # nothing left behind: device, socket, pid file; down.sh ran after the device closed
    assert lab.c1.run("ip", "link", "show", "tap5", check=False).returncode != 0
    assert not (var / f"{MUX}.sock").exists() and not (var / f"{MUX}.pid").exists()
    assert f"down tap5 1500 1549 {local4} 255.255.255.0 init" in _text(var / "up-down.log")
    # explicit-exit-notify: the server drops the client at once instead of timing it out
    assert wait_for(lambda: "OCC exit message received" in lab.server_text(), 10)
    res = _peering(lab, root, "openvpn", "status")
    assert res.stdout.strip() == f"{MUX} tap5 down", res.stdout


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


# ---------------------------------------------------------------- a provider-style config
CHECK_SH = """\
#!/bin/sh
# auth-user-pass-verify via-file: line 1 user, line 2 password
[ "$(sed -n 1p "$1")" = alice ] && [ "$(sed -n 2p "$1")" = "s3cret word" ]
"""


def _mgmt(lab: Lab, port: int, text: str) -> list[str]:
    """A management session through socat (password first), lines without CR."""
    res = lab.c1.run("socat", "-t", "2", "-", f"TCP:127.0.0.1:{port}",
                     input="m-pass\n" + text, timeout=30)
    return [line.rstrip("\r") for line in res.stdout.splitlines()]


@pytest.mark.slow
def test_provider_style_config_cbc_lzo_framing_management(ovlab: Lab) -> None:
    """Several remotes with remote-random, resolv-retry, comp-lzo no, mssfix 1300 (TCP
    SYNs carry the MSS openvpn's own client gives them), auth-user-pass file
    (no client certificate), AES-256-CBC + SHA512, inline tls-auth with key-direction 1,
    setenv, fast-io; the server checks the password with auth-user-pass-verify. Driven
    without daemon, through a password-protected TCP management interface."""
    from harness import Daemon
    from netns import tunconnector_cmd
    from test_openvpn_tls_interop import status, transfer

    lab = ovlab
    p = lab.pki.files
    check = lab.dir / "check.sh"
    check.write_text(CHECK_SH)
    check.chmod(0o755)
    lab.start_server(extra=(
        f"data-ciphers AES-256-CBC\nauth SHA512\ncomp-lzo no\ntls-auth {p['ta.key']} 0\n"
        f"verify-client-cert none\nusername-as-common-name\nduplicate-cn\nscript-security 2\n"
        f"auth-user-pass-verify {check} via-file\n"))
    work = lab.dir / "provider"
    work.mkdir()
    (work / "creds.txt").write_text("alice\ns3cret word\n")
    (work / "mgmt.pw").write_text("m-pass\n")
    (work / "vpn.ovpn").write_text(
        "client\ndev tun\nproto udp\n"
        f"remote {SERVER_IP} 1194\nremote {SERVER_IP} 1194 udp ; the same mux twice\n"
        "remote-random\nresolv-retry infinite\nnobind\npersist-key\npersist-tun\n"
        "comp-lzo no\nmssfix 1300\nauth-user-pass creds.txt\ncipher AES-256-CBC\n"
        "auth SHA512\n"
        "remote-cert-tls server\nkey-direction 1\nsetenv CLIENT_CERT 0\nfast-io\nverb 3\n"
        f"<ca>\n{p['ca.crt'].read_text()}</ca>\n<tls-auth>\n{p['ta.key'].read_text()}"
        "</tls-auth>\n")
    argv = tunconnector_cmd("openvpn", "--cd", str(work), "--config", "vpn.ovpn",
                            "--management", "127.0.0.1", "7505", "mgmt.pw",
                            "--status", "status.txt", "1", "--writepid", "vpn.pid",
                            "--name", "provider")
    d = Daemon(lab.c1, argv, lab.dir, "provider").start()
    lab.daemons.append(d)
    assert wait_for(lambda: "Initialization Sequence Completed" in d.log()
                    or (d.proc is not None and d.proc.poll() is not None), 60), d.log()
    assert d.proc is not None and d.proc.poll() is None, d.log()
    state = _mgmt(lab, 7505, "state\nquit\n")
    assert state[:2] == ["ENTER PASSWORD:SUCCESS: password is correct",
                         ">INFO:OpenVPN Management Interface Version 5 -- type 'help' for "
                         "more info"], state
    assert ",CONNECTED,SUCCESS,10.8.0." in state[2], state
    assert lab.c1.wait_ping("10.8.0.1", 15)
    transfer(lab.c1, lab.s, "10.8.0.1", 8 << 20)
    t = status(d)
    assert t["crypto"]["cipher"] == "AES-256-CBC" and not t["drops"].get("compressed"), t
    dev = t["device"]
    assert "alice" in lab.server_text()  # username-as-common-name: the password passed
    _same_mss_as_openvpn(lab, work)
    stats = _mgmt(lab, 7505, "status\nquit\n")
    assert stats[2] == "OpenVPN STATISTICS" and stats[-1] == "END", stats
    read = dict(line.split(",", 1) for line in stats[3:-1])
    assert int(read["TUN/TAP read bytes"]) > 8 << 20, stats
    assert wait_for(lambda: "TUN/TAP write bytes" in _text(work / "status.txt"), 5)
    pid = int((work / "vpn.pid").read_text())
    assert pid == d.proc.pid
    assert _mgmt(lab, 7505, "signal SIGTERM\n")[2] == "SUCCESS: signal SIGTERM thrown"
    assert d.proc.wait(20) == 0, d.log()
    assert not (work / "vpn.pid").exists()
    final = dict(line.split(",", 1) for line in _text(work / "status.txt").splitlines()[2:-1])
    assert int(final["TCP/UDP read bytes"]) > 0 and int(final["TUN/TAP read bytes"]) > 8 << 20
    assert lab.c1.run("ip", "link", "show", dev, check=False).returncode != 0


def _same_mss_as_openvpn(lab: Lab, work: Path, conf: str = "vpn.ovpn", dev: str = "tun0",
                         want: int | None = None, args: tuple[str, ...] = (
                             # openvpn 2.6 leaves --cipher out of the negotiation
                             "--data-ciphers", "AES-256-GCM:AES-256-CBC")) -> None:
    """The same config in openvpn's own client (on C2): SYNs from both clients reach the
    server's device with the same clamped MSS."""
    log = lab.dir / "openvpn-client.log"
    with open(log, "wb") as out:
        real = lab.c2.popen("openvpn", "--cd", str(work), "--config", conf, "--float",
                            *args, stdout=out, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: "Initialization Sequence Completed" in _text(log), 40), \
            _text(log)
        dump = lab.s.popen("tcpdump", "-i", dev, "-nn", "-l", "-c", "2",
                           "tcp[tcpflags] & tcp-syn != 0 and tcp dst port 5999",
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert dump.stderr is not None
            head = b""
            for _ in range(5):  # "verbose output suppressed ...", then "listening on"
                head += dump.stderr.readline()
                if b"listening on" in head:
                    break
            assert b"listening on" in head, head
            probe = ("import socket; s = socket.socket(); s.settimeout(3); "
                     "s.connect_ex(('10.8.0.1', 5999))")
            probes = [host.run(sys.executable, "-c", probe, check=False, timeout=20)
                      for host in (lab.c1, lab.c2)]
            try:
                out, _ = dump.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                dump.kill()
                out, _ = dump.communicate(timeout=5)
                raise AssertionError((out, [(p.returncode, p.stderr) for p in probes],
                                      lab.c2.run("ip", "addr").stdout)) from None
        finally:
            if dump.poll() is None:
                dump.kill()
                dump.wait(5)
        lines = out.decode().splitlines()
        words = [line.split() for line in lines if "mss " in line]
        ip = 2 if dev.startswith("tun") else 1 + next(  # tap: after the Ethernet part
            (i for i, w in enumerate(words[0]) if w.startswith("IP")), 1)
        mss = {w[ip].rsplit(".", 1)[0]: " ".join(w).split("mss ")[1].split(",")[0]
               for w in words}
        assert len(mss) == 2 and len(set(mss.values())) == 1, lines
        from tunconnector.proto.openvpn.mss import mss_value

        if want is None:
            want = mss_value(mssfix=1300, encap=False, cipher="AES-256-CBC", auth="SHA512",
                             compress="lzo")
        assert set(mss.values()) == {str(want)}, (lines, want)
    finally:
        real.terminate()
        real.wait(10)


# ---------------------------------------------------------------- daemon, restart, cleanup
SCRIPT = """\
#!/bin/sh
set -eu
echo "$script_type $* $script_context" >> events.log
"""


@pytest.mark.slow
def test_daemon_restart_and_nothing_left_behind(ovlab: Lab) -> None:
    """daemon + writepid + log + management unix socket: SIGUSR1 over the management
    interface restarts (down/up with 'restart'), SIGTERM leaves no process, pid file,
    socket or device; each management command answers as openvpn's."""
    lab = ovlab
    p = lab.pki.files
    lab.start_server()
    work = lab.dir / "d"
    work.mkdir()
    (work / "ev.sh").write_text(SCRIPT)
    (work / "ev.sh").chmod(0o755)
    (work / "c.conf").write_text(
        f"client\ndev tun7\nproto udp\nremote {SERVER_IP} 1194\nnobind\n"
        f"ca {p['ca.crt']}\ncert {p['client1.crt']}\nkey {p['client1.key']}\n"
        "remote-cert-tls server\ndaemon\nwritepid c.pid\nlog c.log\n"
        "management c.sock unix\nscript-security 2\nup ./ev.sh\ndown ./ev.sh\n"
        "route-up ./ev.sh\nroute-pre-down ./ev.sh\n")
    env = [f"TUNCONNECTOR_CONTROL_DIR={lab.dir / 'ctl-d'}"]
    from netns import tunconnector_cmd

    res = lab.c1.run("env", *env, *tunconnector_cmd("openvpn", "--cd", str(work), "--config",
                                                    "c.conf"), check=False, timeout=90)
    assert res.returncode == 0, res.stdout + res.stderr
    pid = int((work / "c.pid").read_text())
    assert wait_for(lambda: "Initialization Sequence Completed" in _text(work / "c.log"),
                    30), _text(work / "c.log")
    assert lab.c1.wait_ping("10.8.0.1", 15)
    sock = f"UNIX:{work / 'c.sock'}"

    def mgmt(text: str) -> list[str]:
        out = lab.c1.run("socat", "-t", "2", "-", sock, input=text, timeout=30).stdout
        return [line.rstrip("\r") for line in out.splitlines()]

    lines = mgmt("help\nversion\npid\nstate all\nhold\nverb\nlog 1\nbytecount 1\nquit\n")
    assert lines[0].startswith(">INFO:OpenVPN Management Interface Version 5")
    end = lines.index("END")
    assert lines[1].startswith("Management Interface for OpenVPN") and end > 10
    rest = lines[end + 1:]
    assert rest[0].startswith("OpenVPN Version: OpenVPN 2.6") and rest[2] == "END"
    assert rest[3] == f"SUCCESS: pid={pid}"
    states = rest[4:rest.index("END", 4)]
    assert [s.split(",")[1] for s in states] == ["CONNECTING", "WAIT", "ASSIGN_IP",
                                                 "ADD_ROUTES", "CONNECTED"], states
    after = rest[rest.index("END", 4) + 1:]
    assert after[:2] == ["SUCCESS: hold=0", "SUCCESS: verb=3"], after
    assert after[3] == "END" and after[4] == "SUCCESS: bytecount interval changed", after
    # SIGUSR1: a restart, scripts again with 'restart'
    assert mgmt("signal SIGUSR1\nquit\n")[1] == "SUCCESS: signal SIGUSR1 thrown"
    assert wait_for(lambda: _text(work / "events.log").count("up tun7") == 2, 30), \
        _text(work / "events.log") + _text(work / "c.log")
    assert lab.c1.wait_ping("10.8.0.1", 15)
    assert mgmt("signal SIGTERM\n")[1] == "SUCCESS: signal SIGTERM thrown"
    assert wait_for(lambda: not _alive(pid), 20), _text(work / "c.log")
    assert not (work / "c.pid").exists() and not (work / "c.sock").exists()
    assert lab.c1.run("ip", "link", "show", "tun7", check=False).returncode != 0
    events = _text(work / "events.log").splitlines()
    kinds = [(e.split()[0], e.split()[-1]) for e in events]
    assert kinds == [("up", "init"), ("route-up", "init"), ("route-pre-down", "init"),
                     ("down", "init"), ("up", "restart"), ("route-up", "restart"),
                     ("route-pre-down", "restart"), ("down", "restart")], events
    assert events[0].startswith("up tun7 1500 1549 10.8.0.") and " 255.255.255.0 init" in \
        events[0]
    assert "SIGTERM[hard,] received, process exiting" in _text(work / "c.log")


@pytest.mark.slow
def test_pushed_compress_pull_filter_and_own_routes(ovlab: Lab) -> None:
    """The server pushes compress (stub: every payload's first byte swapped behind a 0xFB
    header, so a client that missed it passes nothing) and two routes; the client ignores one with
    pull-filter and adds its own route; traffic and idle pings pass the framing."""
    from harness import Daemon
    from netns import tunconnector_cmd
    from test_openvpn_tls_interop import status, transfer

    lab = ovlab
    lab.start_server(extra='compress\npush "compress"\n'
                     'push "route 10.77.0.0 255.255.0.0"\npush "route 10.78.0.0 255.255.0.0"\n')
    ovpn = lab.ovpn("c1", extra='pull-filter ignore "route 10.78."\n'
                    "route 10.66.0.0 255.255.0.0\n")
    d = Daemon(lab.c1, tunconnector_cmd("openvpn", "--config", str(ovpn), "--name", "f"),
               lab.dir, "f").start()
    lab.daemons.append(d)
    assert wait_for(lambda: "Initialization Sequence Completed" in d.log(), 40), d.log()
    assert lab.c1.wait_ping("10.8.0.1", 15)
    transfer(lab.c1, lab.s, "10.8.0.1", 4 << 20)
    routes = lab.c1.run("ip", "route").stdout
    assert "10.77.0.0/16" in routes and "10.66.0.0/16" in routes, routes
    assert "10.78.0.0/16" not in routes, routes
    t = status(d)
    assert not t["drops"].get("compressed"), t


VERIFY_SH = """\
#!/bin/sh
echo "$script_type $1 $2 untrusted=$untrusted_ip:$untrusted_port" >> verify.log
[ "$1" != 0 ] || [ "$X509_0_CN" = "$WANT" ]
"""


@pytest.mark.slow
@pytest.mark.parametrize("want", ["server", "someone-else"])
def test_tls_verify_script(ovlab: Lab, want: str) -> None:
    """tls-verify runs per certificate of the server's chain with depth and subject; its
    verdict decides whether the server is accepted."""
    from harness import Daemon
    from netns import tunconnector_cmd

    lab = ovlab
    p = lab.pki.files
    lab.start_server()
    work = lab.dir / "v"
    work.mkdir()
    (work / "v.sh").write_text(VERIFY_SH)
    (work / "v.sh").chmod(0o755)
    (work / "c.conf").write_text(
        f"client\ndev tun\nproto udp\nremote {SERVER_IP} 1194\nnobind\n"
        f"ca {p['ca.crt']}\ncert {p['client1.crt']}\nkey {p['client1.key']}\n"
        f"script-security 2\nsetenv WANT {want}\ntls-verify ./v.sh\n")
    d = Daemon(lab.c1, tunconnector_cmd("openvpn", "--cd", str(work), "--config", "c.conf"),
               lab.dir, "v").start()
    lab.daemons.append(d)
    if want == "server":
        assert wait_for(lambda: "Initialization Sequence Completed" in d.log(), 40), d.log()
        assert lab.c1.wait_ping("10.8.0.1", 15)
        lines = _text(work / "verify.log").splitlines()
        assert lines[:2] == [f"tls-verify 1 CN=Test CA untrusted={SERVER_IP}:1194",
                             f"tls-verify 0 CN=server untrusted={SERVER_IP}:1194"], lines
    else:
        assert wait_for(lambda: "tls-verify refused the certificate at depth 0" in d.log(),
                        40), d.log()
        assert "Initialization Sequence Completed" not in d.log()
        # refused: no device and no route, so ping may send nothing at all
        assert lab.c1.ping("10.8.0.1", count=2, interval=0.2)[1] == 0
