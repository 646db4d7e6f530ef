"""The sans-I/O core imports without the daemon's optional and kernel-facing packages."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import tunconnector.proto

BLOCKED = ("pyroute2", "fastapi", "uvicorn", "uvloop", "pytun_pmd3", "pytun")


def test_every_proto_module_imports_without_pyroute2_fastapi_uvicorn_uvloop() -> None:
    root = Path(tunconnector.proto.__file__).parent
    modules = sorted(f"tunconnector.proto.{m.name}" for m in pkgutil.iter_modules([str(root)]))
    modules += [f"tunconnector.proto.openvpn.{m.name}"
                for m in pkgutil.iter_modules([str(root / "openvpn")])]
    script = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {BLOCKED!r}:\n"
        "            raise ImportError('blocked: ' + name)\n"
        "        return None\n"
        "sys.meta_path.insert(0, Block())\n"
        "import importlib\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "import tunconnector\n"
        "assert tunconnector.Config is not None\n"
        "print('ok', len(sys.modules))\n"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and res.stdout.startswith("ok"), res.stderr


def test_lazy_names_still_resolve() -> None:
    import tunconnector

    assert tunconnector.Tunnel.__name__ == "Tunnel"
    assert tunconnector.Node.__name__ == "Node"
    assert callable(tunconnector.serve)
