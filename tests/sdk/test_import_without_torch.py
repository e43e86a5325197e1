"""usseg_sdk must import, and its modules load, with torch unavailable (anomalib issue 2426 is the warning)."""

import subprocess
import sys
import textwrap

from tests.conftest import ROOT


def test_usseg_sdk_imports_with_torch_blocked():
    code = textwrap.dedent("""
        import sys, pkgutil, importlib
        sys.modules["torch"] = None          # any `import torch` now raises ImportError
        sys.modules["training"] = None
        sys.modules["export"] = None
        import usseg_sdk
        names = [m.name for m in pkgutil.walk_packages(usseg_sdk.__path__, "usseg_sdk.")]
        for name in names:
            importlib.import_module(name)
        for attr in usseg_sdk.__all__:
            getattr(usseg_sdk, attr)
        assert "torch" not in {k for k, v in sys.modules.items() if v is not None}
        print("ok", len(names))
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")
