"""The wheel an inspection line installs ships usseg_sdk only, and torch is never a core requirement."""

import subprocess
import sys
import zipfile

from tests.conftest import ROOT


def test_wheel_ships_runtime_only(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("usseg_sdk-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        top = {name.split("/")[0] for name in zf.namelist()}
        metadata = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = zf.read(next(n for n in zf.namelist() if n.endswith("entry_points.txt"))).decode()
    assert {t for t in top if not t.endswith(".dist-info")} == {"usseg_sdk"}
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    core = [r for r in requires if "extra ==" not in r]
    assert sorted(r.split(">")[0].split("=")[0] for r in core) == ["numpy", "opencv-python-headless", "pydantic",
                                                                   "scipy"]
    torch_extras = {r.split("extra ==")[1].strip().strip('"') for r in requires if r.startswith("torch")}
    assert torch_extras == {"train", "export"}
    extras_of = {r.split(";")[0].split(">")[0].strip(): r.split("extra ==")[1].strip().strip('"')
                 for r in requires if r.startswith("onnxruntime")}
    assert extras_of == {"onnxruntime": "cpu", "onnxruntime-gpu": "gpu"}  # never both in one extra
    assert "usseg = usseg_sdk.cli:main" in entry_points
