"""Run a command inside a QEMU guest booted from Debian's packaged 6.1 kernel.

Why: the host kernel may lack bonding, netem or other modules a test needs; a guest
kernel has them all. The guest boots a tiny busybox initramfs that loads virtio/9p,
mounts the host's root filesystem read-only over 9p and chroots into it, so the
project's venv (Python, pyroute2, the package itself) runs there unchanged. Results come
back through a second, read-write 9p share and the serial console.

Everything expensive is cached (``$TUNCONNECTOR_VM_CACHE``, else
``$XDG_CACHE_HOME/tunconnector/vm``, else ``<repo>/.cache/vm`` in a checkout,
``~/.cache/tunconnector/vm`` for an installed package): the kernel package is
fetched once with ``apt-get download``, unpacked with ``dpkg -x`` and indexed with
busybox ``depmod``; the initramfs is rebuilt only when its inputs change.

:func:`run_in_vm` is the one entry point; :class:`VmUnavailable` says why a VM cannot be
had (tests turn it into a skip). TCG only: KVM is not assumed (it hangs on some hosts).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import re
import shlex
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import TunconnectorError

__all__ = [
    "DEFAULT_MODULES",
    "Kernel",
    "VmResult",
    "VmUnavailable",
    "cache_dir",
    "check_case",
    "inner_test_names",
    "ensure_initramfs",
    "ensure_kernel",
    "find_qemu",
    "parse_junit",
    "run_in_vm",
    "run_pytest_in_vm",
    "vm_available",
]

#: Loaded (with their dependencies) before the command runs. nftables expressions,
#: qdiscs and the like are also auto-loaded on demand through the initramfs' modprobe.
DEFAULT_MODULES: tuple[str, ...] = (
    "virtio_rng",
    "virtio_net",
    "bonding",
    "tun",
    "veth",
    "bridge",
    "sch_netem",
    "nf_tables",
    "nft_ct",
    "nft_reject_inet",
    "nf_conntrack",
)

#: Needed before the host root can be mounted; they go into the initramfs itself.
EARLY_MODULES: tuple[str, ...] = ("virtio_pci", "9pnet_virtio", "9p")

KERNEL_PKG_RE = re.compile(r"^linux-image-6\.1\.0-(\d+)-amd64$")
READY_MARK = "TCVM-READY"
EXIT_MARK = "TCVM-EXIT"
_REPO_ROOT = Path(__file__).resolve().parents[2]


class VmUnavailable(TunconnectorError):
    """QEMU, the kernel package or busybox-static cannot be had here (tests skip)."""


@dataclass(frozen=True, slots=True)
class Kernel:
    """An unpacked kernel package: the image and its indexed module tree."""

    version: str
    vmlinuz: Path
    modules_dir: Path  # .../lib/modules/<version>, with modules.dep and modules.alias
    vmlinux: Path | None = None  # uncompressed ELF: PVH boot skips ~2.5 s of TCG unxz

    @property
    def boot_image(self) -> Path:
        if self.vmlinux is not None and os.environ.get("TUNCONNECTOR_VM_BZIMAGE") != "1":
            return self.vmlinux
        return self.vmlinuz


@dataclass(slots=True)
class VmResult:
    """What came back from one guest run.

    ``returncode`` is the command's exit status, or None when it never finished
    (timeout, guest crash). ``boot_seconds`` is host wall time from starting QEMU to the
    moment the guest was about to run the command; ``guest_uptime`` the guest's own clock
    at that point.
    """

    returncode: int | None
    console: str
    output: str
    share: Path
    elapsed: float
    boot_seconds: float | None = None
    guest_uptime: float | None = None
    timed_out: bool = False
    qemu_returncode: int | None = None
    command: list[str] = field(default_factory=list)
    #: the guest kernel reported a CPU stuck for LOCKUP_GIVE_UP seconds: the run was cut
    guest_lockup: bool = False
    #: the first lockup report (with its stack) of earlier runs given up on that way
    earlier_lockups: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def first_lockup(self, lines: int = 60) -> str:
        """The console from the guest kernel's first soft-lockup report on (its stack)."""
        console = self.console.splitlines()
        for i, line in enumerate(console):
            if "soft lockup" in line:
                return "\n".join(console[max(0, i - 5):i + lines])
        return ""

    def describe(self, tail: int = 60) -> str:
        """A short report for assertion messages: status and the console's tail (and
        the first lockup report, when the guest kernel locked up)."""
        lines = self.console.splitlines()[-tail:]
        state = "cut after a guest kernel lockup" if self.guest_lockup else (
            "timed out" if self.timed_out else f"rc={self.returncode}")
        text = f"VM run {state} after {self.elapsed:.1f}s; console tail:\n" + "\n".join(lines)
        if self.guest_lockup:
            text += "\nfirst lockup report:\n" + self.first_lockup()
        for i, report in enumerate(self.earlier_lockups, 1):
            text += f"\nearlier run {i} given up after a guest kernel lockup:\n{report}"
        return text


# -- locations and tools ----------------------------------------------------------------


def cache_dir() -> Path:
    env = os.environ.get("TUNCONNECTOR_VM_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg) / "tunconnector" / "vm"
    if (_REPO_ROOT / "pyproject.toml").exists():  # a checkout (editable install)
        return _REPO_ROOT / ".cache" / "vm"
    return Path.home() / ".cache" / "tunconnector" / "vm"  # installed: not site-packages


def find_qemu() -> str:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise VmUnavailable("qemu-system-x86_64 not found (apt-get install qemu-system-x86)")
    return qemu


def _find_static_busybox() -> Path:
    for cand in (os.environ.get("TUNCONNECTOR_VM_BUSYBOX"), "/bin/busybox", "/usr/bin/busybox"):
        if cand and Path(cand).is_file() and _is_static_elf(Path(cand)):
            return Path(cand)
    raise VmUnavailable("a static busybox is needed (apt-get install busybox-static)")


def _is_static_elf(path: Path) -> bool:
    """True for an x86-64 ELF without a PT_INTERP segment (no dynamic loader needed)."""
    with path.open("rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2:
            return False
        (phoff,) = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for i in range(phnum):
        (p_type,) = struct.unpack_from("<I", table, i * phentsize)
        if p_type == 3:  # PT_INTERP
            return False
    return True


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise cache builds between concurrent test runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(cmd: Sequence[str], *, cwd: Path | None = None, timeout: float = 300) -> str:
    try:
        proc = subprocess.run(
            list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise VmUnavailable(f"{cmd[0]} not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise VmUnavailable(f"{' '.join(cmd)} timed out after {timeout}s") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise VmUnavailable(f"{' '.join(cmd)} failed ({proc.returncode}): {' | '.join(tail)}")
    return proc.stdout


# -- kernel package -----------------------------------------------------------------------


def _kernel_from_tree(root: Path) -> Kernel | None:
    if not (root / ".ready").exists():
        return None
    vmlinuz = sorted((root / "boot").glob("vmlinuz-*"))
    if not vmlinuz:
        return None
    version = vmlinuz[-1].name.removeprefix("vmlinuz-")
    vmlinux = root / "boot" / f"vmlinux-{version}"
    return Kernel(
        version,
        vmlinuz[-1],
        root / "lib" / "modules" / version,
        vmlinux if vmlinux.exists() else None,
    )


def extract_vmlinux(bzimage: bytes) -> bytes | None:
    """The ELF kernel inside a bzImage (xz or gzip payload), or None if not found.

    QEMU boots such an ELF through its PVH entry point, so the guest does not spend
    seconds decompressing itself under TCG.
    """
    import gzip
    import lzma
    import zlib

    for magic, decomp in (
        (b"\xfd7zXZ\x00", lambda b: lzma.LZMADecompressor().decompress(b)),
        (b"\x1f\x8b\x08", lambda b: zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(b)),
    ):
        pos = bzimage.find(magic)
        while pos >= 0:
            try:
                out = decomp(bzimage[pos:])
            except (lzma.LZMAError, zlib.error, gzip.BadGzipFile, EOFError):
                out = b""
            if out[:4] == b"\x7fELF":
                return out
            pos = bzimage.find(magic, pos + 1)
    return None


def _ensure_vmlinux(k: Kernel) -> Kernel:
    if k.vmlinux is not None:
        return k
    marker = k.vmlinuz.with_name(f".no-vmlinux-{k.version}")
    if marker.exists():
        return k
    elf = extract_vmlinux(k.vmlinuz.read_bytes())
    if elf is None:
        marker.write_text("no ELF payload found\n")
        return k
    target = k.vmlinuz.with_name(f"vmlinux-{k.version}")
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(elf)
    tmp.rename(target)
    return Kernel(k.version, k.vmlinuz, k.modules_dir, target)


def _resolve_package_name() -> str:
    """The kernel package to fetch: the one linux-image-amd64 points at, else the newest."""
    forced = os.environ.get("TUNCONNECTOR_VM_KERNEL_PKG")
    if forced:
        return forced
    try:
        out = _run(["apt-cache", "depends", "linux-image-amd64"], timeout=60)
    except VmUnavailable:
        out = ""
    for line in out.splitlines():
        name = line.strip().removeprefix("Depends:").strip()
        if KERNEL_PKG_RE.match(name):
            return name
    out = _run(["apt-cache", "pkgnames", "linux-image-6.1.0-"], timeout=60)
    names = [n for n in out.split() if KERNEL_PKG_RE.match(n)]
    if not names:
        raise VmUnavailable("no linux-image-6.1.*-amd64 package known to apt (apt-get update?)")
    return max(names, key=lambda n: int(KERNEL_PKG_RE.match(n).group(1)))  # type: ignore[union-attr]


def ensure_kernel(cache: Path | None = None) -> Kernel:
    """Fetch, unpack and index the Debian 6.1 kernel once; later calls are offline."""
    cache = cache or cache_dir()
    kernels = cache / "kernels"
    forced = os.environ.get("TUNCONNECTOR_VM_KERNEL_PKG")
    with _locked(cache / ".lock"):
        existing = (
            [kernels / forced] if forced else sorted(kernels.glob("linux-image-*"), reverse=True)
        )
        for tree in existing:
            k = _kernel_from_tree(tree)
            if k is not None:
                return _ensure_vmlinux(k)
        if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
            raise VmUnavailable("apt-get/dpkg not available to fetch linux-image-6.1.*-amd64")
        busybox = _find_static_busybox()
        name = _resolve_package_name()
        kernels.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=kernels, prefix=".dl-") as tmp:
            tmpdir = Path(tmp)
            _run(["apt-get", "download", name], cwd=tmpdir, timeout=600)
            debs = list(tmpdir.glob("*.deb"))
            if not debs:
                raise VmUnavailable(f"apt-get download {name} produced no .deb")
            tree = tmpdir / "tree"
            _run(["dpkg", "-x", str(debs[0]), str(tree)], timeout=600)
            k = _kernel_from_tree_unchecked(tree)
            # Debian generates modules.dep at install time; busybox depmod does it here.
            _run([str(busybox), "depmod", "-b", str(tree), k.version], timeout=600)
            (tree / ".ready").write_text(f"{name}\n")
            final = kernels / name
            if final.exists():
                shutil.rmtree(final)
            tree.rename(final)
        k2 = _kernel_from_tree(final)
        if k2 is None:  # pragma: no cover - we just wrote it
            raise VmUnavailable(f"unpacked kernel at {final} is incomplete")
        return _ensure_vmlinux(k2)


def _kernel_from_tree_unchecked(root: Path) -> Kernel:
    vmlinuz = sorted((root / "boot").glob("vmlinuz-*"))
    if not vmlinuz:
        raise VmUnavailable(f"no boot/vmlinuz-* in the kernel package ({root})")
    version = vmlinuz[-1].name.removeprefix("vmlinuz-")
    return Kernel(version, vmlinuz[-1], root / "lib" / "modules" / version)


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """``modules.dep`` -> {module name: (relative path, [dependency paths])}."""
    index: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        path, sep, deps = line.partition(":")
        if not sep:
            continue
        index[_modname(path)] = (path.strip(), deps.split())
    return index


def _modname(path: str) -> str:
    base = path.strip().rsplit("/", 1)[-1]
    base = re.sub(r"\.ko(\.(xz|zst|gz))?$", "", base)
    return base.replace("-", "_")


def module_closure(index: Mapping[str, tuple[str, list[str]]], names: Sequence[str]) -> list[str]:
    """Relative paths of ``names`` and everything they need, dependencies first."""
    by_path = {p: deps for p, deps in index.values()}
    order: list[str] = []
    seen: set[str] = set()

    def visit(path: str) -> None:
        if path in seen:
            return
        seen.add(path)
        for dep in by_path.get(path, []):
            visit(dep)
        order.append(path)

    for name in names:
        key = name.replace("-", "_")
        if key not in index:
            raise VmUnavailable(f"module {name} is not in the kernel package")
        visit(index[key][0])
    return order


# -- initramfs ------------------------------------------------------------------------------

_INIT = r"""#!/bin/busybox sh
# tunconnector VM harness /init: load virtio+9p, mount the host root read-only, chroot
# into it and run the command described in the results share, then power off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo /bin/modprobe > /proc/sys/kernel/modprobe
die() { echo "TCVM-FAIL $*"; echo "TCVM-EXIT 255"; sync; reboot -f; sleep 5; }
for m in @EARLY@; do insmod "/early/$m" || die "insmod $m"; done
opts=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o "$opts,ro,cache=loose" hostroot /host || die "mount hostroot"
mount -t 9p -o "$opts,cache=none" results /share || die "mount results"
. /share/.tcvm/config.sh || die "config.sh"
mkdir -p "/lib/modules/$TCVM_KVER"
mount --bind "/host$TCVM_MODDIR" "/lib/modules/$TCVM_KVER" || die "bind modules"
for m in $TCVM_MODULES; do modprobe "$m" || echo "TCVM-WARN modprobe $m failed"; done
# /var becomes a writable skeleton of the host's: same top-level dirs and symlinks
# (/var/run -> /run matters to netns tools), empty.
skel=""
for e in /host/var/* /host/var/.[!.]*; do
  n=${e#/host/var/}
  if [ -L "$e" ]; then skel="$skel L:$n:$(readlink "$e")"
  elif [ -d "$e" ]; then skel="$skel D:$n"; fi
done
# a checkout under /tmp (CI clones anywhere) must stay visible under the fresh tmpfs
mkdir -p /hosttmp && mount --bind /host/tmp /hosttmp
for d in tmp run var; do mount -t tmpfs -o mode=1777 tmpfs "/host/$d" || die "tmpfs /$d"; done
for k in $TCVM_KEEP; do
  mkdir -p "/host$k" && mount --bind "/hosttmp${k#/tmp}" "/host$k" || die "bind $k"
done
for item in $skel; do
  kind=${item%%:*}; rest=${item#*:}
  if [ "$kind" = L ]; then ln -s "${rest#*:}" "/host/var/${rest%%:*}"
  else mkdir -p "/host/var/$rest"; fi
done
mkdir -p /host/run/lock /host/run/netns
mount -t proc proc /host/proc
mount -t sysfs sysfs /host/sys
mount -t devtmpfs devtmpfs /host/dev
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts devpts /host/dev/pts
mount -t tmpfs tmpfs /host/dev/shm
mkdir -p "/host$TCVM_SHARE" 2>/dev/null
mount --bind /share "/host$TCVM_SHARE" || die "bind share"
ip link set lo up
echo "TCVM-READY $(cut -d' ' -f1 /proc/uptime)"
chroot /host /bin/sh "$TCVM_SHARE/.tcvm/run.sh" 2>&1 | tee /share/.tcvm/output.log
rc=$(cat /share/.tcvm/rc 2>/dev/null || echo 254)
sync
echo "TCVM-EXIT $rc"
reboot -f
sleep 5
"""

_MODPROBE_CONF = "options bonding max_bonds=0\noptions dummy numdummies=0\n"


class _Cpio:
    """A minimal ``newc`` archive writer: no cpio binary and no root needed for nodes."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._ino = 1

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        nameb = name.encode() + b"\0"
        fields = (
            self._ino,
            mode,
            0,
            0,
            1,
            0,
            len(data),
            0,
            0,
            rdev[0],
            rdev[1],
            len(nameb),
            0,
        )
        self._ino += 1
        hdr = b"070701" + b"".join(b"%08X" % v for v in fields)
        self._buf.write(hdr + nameb)
        self._buf.write(b"\0" * (-(len(hdr) + len(nameb)) % 4))
        self._buf.write(data)
        self._buf.write(b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        data = self._buf.getvalue()
        return data + b"\0" * (-len(data) % 512)


def ensure_initramfs(kernel: Kernel, cache: Path | None = None) -> Path:
    """Build (or reuse) the busybox initramfs for ``kernel``; returns the cpio's path."""
    cache = cache or cache_dir()
    busybox = _find_static_busybox()
    index = parse_modules_dep((kernel.modules_dir / "modules.dep").read_text())
    early = module_closure(index, EARLY_MODULES)
    bb = busybox.read_bytes()
    init = _INIT.replace("@EARLY@", " ".join(Path(p).name for p in early))
    key = hashlib.sha256()
    for part in (
        kernel.version.encode(),
        bb,
        init.encode(),
        _MODPROBE_CONF.encode(),
        *map(str.encode, early),
    ):
        key.update(hashlib.sha256(part).digest())
    out = cache / f"initramfs-{kernel.version}-{key.hexdigest()[:16]}.cpio"
    if out.exists():
        return out
    with _locked(cache / ".lock"):
        if out.exists():
            return out
        c = _Cpio()
        for d in (
            "bin",
            "dev",
            "proc",
            "sys",
            "host",
            "share",
            "early",
            "lib",
            "lib/modules",
            "etc",
            "tmp",
            "etc/modprobe.d",
        ):
            c.dir(d)
        c.chardev("dev/console", 5, 1)
        c.chardev("dev/null", 1, 3)
        c.file("bin/busybox", bb, 0o755)
        c.symlink("sbin", "bin")
        c.file("init", init.encode(), 0o755)
        c.file("etc/modprobe.d/tunconnector.conf", _MODPROBE_CONF.encode())
        for rel in early:
            c.file(f"early/{Path(rel).name}", (kernel.modules_dir / rel).read_bytes())
        tmp = out.with_suffix(".tmp")
        tmp.write_bytes(c.finish())
        tmp.rename(out)
    return out


# -- running ----------------------------------------------------------------------------------


def vm_available() -> tuple[bool, str]:
    """(True, "") when a VM can be booted here, else (False, why) for a skip reason."""
    try:
        find_qemu()
        _find_static_busybox()
        k = ensure_kernel()
        ensure_initramfs(k)
    except VmUnavailable as exc:
        return False, str(exc)
    return True, ""


def _host_path(p: Path) -> str:
    text = str(p.resolve())
    if any(ch in text for ch in "'\"\\\n$`") or " " in text:
        raise VmUnavailable(f"share path {text!r} has characters the guest shell cannot take")
    return text


def _keep_under_tmp(*paths: str) -> list[str]:
    """Host directories under /tmp the guest must still see once /tmp is a tmpfs."""
    keep = []
    # sys.prefix, not the resolved interpreter: a venv's python is a symlink out of it
    for p in {*paths, sys.prefix}:
        rp = Path(p).resolve()
        if rp.parts[:2] == ("/", "tmp") and len(rp.parts) > 2:
            keep.append(str(Path(*rp.parts[:3])))
    return sorted(set(keep))


def run_in_vm(
    command: Sequence[str],
    timeout: float,
    share: Path,
    *,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    modules: Sequence[str] = DEFAULT_MODULES,
    memory_mb: int = 2048,
    smp: int = 2,
    extra_qemu_args: Sequence[str] = (),
    echo: bool = False,
    wrapper: Sequence[str] = (),
) -> VmResult:
    """Boot a guest, run ``command`` (argv, no shell) chrooted in the host root, power off.

    ``wrapper`` prefixes QEMU's argv (e.g. ``ip netns exec NS`` so the guest's
    ``-netdev dgram`` NIC lives in a namespace). ``share`` (created if missing) is
    mounted read-write at the same path inside the guest;
    the command's output lands in ``share/.tcvm/output.log``. ``timeout`` bounds the whole
    run including boot; on expiry QEMU is killed and ``timed_out`` is set.
    """
    qemu = find_qemu()
    kernel = ensure_kernel()
    initrd = ensure_initramfs(kernel)
    share.mkdir(parents=True, exist_ok=True)
    share_path = _host_path(share)
    ctl = share / ".tcvm"
    if ctl.exists():
        shutil.rmtree(ctl)
    ctl.mkdir()
    guest_env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "TERM": "dumb",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "TUNCONNECTOR_IN_VM": "1",
        "TCVM_SHARE": share_path,
    }
    guest_env.update(env or {})
    workdir = str(cwd if cwd is not None else Path.cwd())
    rc_file = shlex.quote(f"{share_path}/.tcvm/rc")
    lines = [
        "set +e",
        f"cd {shlex.quote(workdir)} || {{ echo 125 > {rc_file}; exit 125; }}",
    ]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in guest_env.items()]
    lines.append(" ".join(shlex.quote(a) for a in command) + " </dev/null")
    lines.append(f"echo $? > {rc_file}")
    (ctl / "run.sh").write_text("\n".join(lines) + "\n")
    moddir = str(kernel.modules_dir.resolve())
    (ctl / "config.sh").write_text(
        f"TCVM_KVER={shlex.quote(kernel.version)}\n"
        f"TCVM_MODDIR={shlex.quote(moddir)}\n"
        f"TCVM_SHARE={shlex.quote(share_path)}\n"
        f"TCVM_MODULES={shlex.quote(' '.join(modules))}\n"
        f"TCVM_KEEP={shlex.quote(' '.join(_keep_under_tmp(workdir)))}\n"
    )
    append = (
        "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init mitigations=off "
        "tsc=reliable no_timer_check random.trust_cpu=on i8042.noaux i8042.nokbd "
        "8250.nr_uarts=1 cryptomgr.notests"
    )
    argv = [
        *wrapper,
        qemu,
        "-accel",
        "tcg",
        "-M",
        "pc",
        "-cpu",
        "max",
        "-m",
        str(memory_mb),
        "-smp",
        str(smp),
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
        "-no-reboot",
        *_bios_args(),
        "-kernel",
        str(kernel.boot_image),
        "-initrd",
        str(initrd),
        "-append",
        append,
        "-virtfs",
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs",
        f"local,path={share_path},mount_tag=results,security_model=none,multidevs=remap",
        "-device",
        "virtio-rng-pci",
        *extra_qemu_args,
    ]
    return _drive(argv, timeout, share, list(command), echo)


def _bios_args() -> list[str]:
    """qboot boots a -kernel in a fraction of SeaBIOS' time; use it when installed."""
    for p in ("/usr/share/qemu/qboot.rom", "/usr/share/qboot/bios.bin"):
        if Path(p).is_file() and os.environ.get("TUNCONNECTOR_VM_SEABIOS") != "1":
            return ["-bios", p]
    return []


#: QEMU's nice value: the guest stands for a machine with CPUs of its own, and its timing
#: checks (failover within 2 x arp_interval, scaled by the guest's gauged speed) measure
#: the guest's kernel and daemons, not how other processes on the host share its cores;
#: ahead of them (CFS weight ~9.3x a nice-0 process) the emulated vCPUs are not starved
#: by a busy host, on a quiet host this changes nothing
VM_NICE = -10


def _emulator_priority() -> None:
    """In the QEMU child before exec: raise its priority where allowed (root), else keep it."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, VM_NICE)


def _drive(
    argv: list[str], timeout: float, share: Path, command: list[str], echo: bool
) -> VmResult:
    start = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=_emulator_priority,
    )
    console: list[str] = []
    ready_at: list[float] = []
    guest_uptime: list[float] = []
    exit_rc: list[int] = []

    def reader() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n").replace("\r", "")
            console.append(line)
            if echo:
                sys.stderr.write(line + "\n")
            if line.startswith(READY_MARK) and not ready_at:
                ready_at.append(time.monotonic() - start)
                with contextlib.suppress(ValueError, IndexError):
                    guest_uptime.append(float(line.split()[1]))
            elif line.startswith(EXIT_MARK):
                with contextlib.suppress(ValueError, IndexError):
                    exit_rc.append(int(line.split()[1]))
            elif "soft lockup" in line:
                m = _LOCKUP.search(line)
                if m and int(m.group(1)) >= LOCKUP_GIVE_UP:
                    locked.set()

    locked = threading.Event()
    t = threading.Thread(target=reader, name="vm-console", daemon=True)
    t.start()
    timed_out = lockup = False
    deadline = start + timeout
    try:
        while True:
            try:
                proc.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                if locked.is_set():  # the guest kernel is wedged: no test can finish
                    lockup = True
                elif time.monotonic() < deadline:
                    continue
                timed_out = True
                proc.kill()
                proc.wait(timeout=30)
                break
    finally:
        if proc.poll() is None:  # pragma: no cover - interrupted
            proc.kill()
            proc.wait(timeout=30)
    t.join(timeout=10)
    elapsed = time.monotonic() - start
    ctl = share / ".tcvm"
    rc: int | None = None
    if not timed_out:
        try:
            rc = int((ctl / "rc").read_text().strip())
        except (OSError, ValueError):
            rc = exit_rc[0] if exit_rc else None
    try:
        output = (ctl / "output.log").read_text(errors="replace")
    except OSError:
        output = ""
    return VmResult(
        returncode=rc,
        console="\n".join(console),
        output=output,
        share=share,
        elapsed=elapsed,
        boot_seconds=ready_at[0] if ready_at else None,
        guest_uptime=guest_uptime[0] if guest_uptime else None,
        timed_out=timed_out,
        qemu_returncode=proc.returncode,
        command=command,
        guest_lockup=lockup,
    )


# -- pytest inside the guest ------------------------------------------------------------------


@dataclass(slots=True)
class CaseResult:
    """One test case from the guest's JUnit XML."""

    name: str
    outcome: Literal["passed", "failed", "skipped"]
    message: str = ""
    seconds: float = 0.0
    module: str = ""  # the test module's name (last part of the JUnit classname)


@dataclass(slots=True)
class PytestRun:
    """A guest pytest run: the VM result plus every case by name (``test_x[param]``)."""

    vm: VmResult
    cases: dict[str, CaseResult]
    properties: dict[str, str]

    def matching(self, name: str, module: str | None = None) -> list[CaseResult]:
        """Cases for test function ``name`` (all its parametrisations), optionally only
        those of test module ``module`` (file stem)."""
        return [
            c
            for c in self.cases.values()
            if (c.name == name or c.name.startswith(name + "["))
            and (module is None or c.module == module)
        ]


def parse_junit(text: str) -> tuple[dict[str, CaseResult], dict[str, str]]:
    """Cases and ``record_property`` values from a pytest JUnit XML document."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(text)
    cases: dict[str, CaseResult] = {}
    props: dict[str, str] = {}
    for tc in root.iter("testcase"):
        name = tc.get("name", "")
        module = tc.get("classname", "").rsplit(".", 1)[-1]
        outcome: Literal["passed", "failed", "skipped"] = "passed"
        message = ""
        for child in tc:
            if child.tag in ("failure", "error"):
                outcome = "failed"
                message = (child.get("message", "") + "\n" + (child.text or "")).strip()
            elif child.tag == "skipped" and outcome != "failed":
                outcome = "skipped"
                message = child.get("message", "")
            elif child.tag == "properties":
                for prop in child:
                    props[f"{name}.{prop.get('name')}"] = prop.get("value", "")
        seconds = float(tc.get("time", "0") or 0)
        cases[f"{module}::{name}"] = CaseResult(name, outcome, message, seconds, module)
    return cases, props


#: a guest kernel CPU reported stuck this long (seconds) is a wedged guest: the run is cut
LOCKUP_GIVE_UP = 120
#: such runs made once more on a fresh guest (then the failure stands, with both reports)
LOCKUP_RETRIES = 1
_LOCKUP = re.compile(r"soft lockup - CPU#\d+ stuck for (\d+)s")

#: the one guest run of every inner module, boot included: generous, the daemon starts more
#: slowly under TCG than on the host, and busy processes beside the host slow the guest
#: several times over; a stuck guest is still cut off well inside the CI budget
VM_SUITE_TIMEOUT = 1200
#: pytest-timeout for a host test that may be the first to wait for that guest run: the
#: fixture's set-up counts against the test, so it must outlast the guest's own bound
VM_HOST_TEST_TIMEOUT = VM_SUITE_TIMEOUT + 120


def run_pytest_in_vm(
    paths: Sequence[str | Path],
    share: Path,
    timeout: float,
    *,
    args: Sequence[str] = (),
    inner_timeout: float | None = None,
    plugins: Sequence[str] = ("pytest_timeout",),
    **kwargs: Any,
) -> PytestRun:
    """Run ``pytest paths`` in a guest with the host's interpreter; collect JUnit results.

    ``sys.executable`` is used as is: the guest sees the host root, so the venv is there.
    Plugin auto-loading is off (importing every installed plugin over 9p under TCG costs
    seconds); ``plugins`` are loaded explicitly (``pytest_asyncio.plugin`` if needed).
    """
    share.mkdir(parents=True, exist_ok=True)
    junit = share / "junit.xml"
    junit.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-o",
        "junit_family=xunit1",
        f"--junitxml={junit}",
        "-q",
        "-rfEs",
        "-W",
        "ignore::pytest.PytestConfigWarning",  # asyncio_* ini keys without the plugin
        *[arg for p in plugins for arg in ("-p", p)],
        *(
            [f"--timeout={int(inner_timeout or max(timeout - 30, 30))}"]
            if "pytest_timeout" in plugins
            else []
        ),
        *map(str, paths),
        *args,
    ]
    env = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", **kwargs.pop("env", {})}
    cwd = kwargs.pop("cwd", _REPO_ROOT)
    earlier: list[str] = []
    while True:
        result = run_in_vm(command, timeout, share, cwd=cwd, env=env, **kwargs)
        if not result.guest_lockup or len(earlier) >= LOCKUP_RETRIES:
            break
        # the emulated guest's kernel wedged (both vCPUs stuck in it, seen once in
        # months of runs under TCG): the run says nothing about the code under test, so
        # it is made once more on a fresh guest, and the report keeps the lockup
        earlier.append(result.first_lockup())
        sys.stderr.write(f"VM: guest kernel lockup after {result.elapsed:.0f}s, "
                         "running once more on a fresh guest\n")
        junit.unlink(missing_ok=True)
    result.earlier_lockups = earlier
    try:
        cases, props = parse_junit(junit.read_text())
    except (OSError, ValueError, SyntaxError):
        cases, props = {}, {}
    return PytestRun(result, cases, props)


def inner_test_names(path: Path) -> list[str]:
    """Top-level test function names of a guest-side module, in file order (no import)."""
    import ast

    tree = ast.parse(path.read_text())
    return [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
    ]


def check_case(run: PytestRun, name: str, module: str | None = None) -> None:
    """Turn the guest's verdict on test ``name`` into the calling host test's verdict."""
    import pytest

    cases = run.matching(name, module)
    if not cases:
        pytest.fail(f"{name} did not run in the guest.\n{run.vm.describe()}", pytrace=False)
    failed = [c for c in cases if c.outcome == "failed"]
    if failed:
        pytest.fail("\n\n".join(f"{c.name}: {c.message}" for c in failed), pytrace=False)
    if all(c.outcome == "skipped" for c in cases):
        pytest.skip(cases[0].message)
