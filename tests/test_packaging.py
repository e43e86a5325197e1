"""The wheel an inspection line installs ships usseg_sdk only, torch is never a core requirement, and the runtime
extras (cpu / gpu) bring every `usseg` command's needs (onnx for `usseg calibrate`) without torch."""

import re
import shutil
import subprocess
import sys
import zipfile

from tests.conftest import ROOT


def _build_wheel(tmp_path):
    """Build from a clean copy: an in-tree build/ folder keeps files deleted since (a stale usseg_sdk/cli.py)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "usseg_sdk", src / "usseg_sdk", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(src)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("usseg_sdk-*.whl")
    return wheel


def test_wheel_ships_runtime_only(tmp_path):
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert {t.split("/")[0] for t in names if not t.split("/")[0].endswith(".dist-info")} == {"usseg_sdk"}
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "usseg_sdk").rglob("*.py")}
    assert {n for n in names if n.endswith(".py")} == sources
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    core = [r for r in requires if "extra ==" not in r]
    assert sorted(r.split(">")[0].split("=")[0] for r in core) == ["numpy", "opencv-python-headless", "pydantic",
                                                                   "scipy"]

    def extras_of(package: str) -> set[str]:
        return {r.split("extra ==")[1].strip().strip('"') for r in requires
                if re.match(r"[A-Za-z0-9_.-]+", r).group() == package}

    assert extras_of("torch") == {"train", "export"}
    assert extras_of("onnxruntime") == {"cpu"} and extras_of("onnxruntime-gpu") == {"gpu"}  # never both in one
    assert {"cpu", "gpu"} <= extras_of("onnx")  # usseg calibrate works with the runtime install
    assert "usseg = usseg_sdk.cli:main" in entry_points


def test_make_wheel_builds_from_a_clean_build_folder():
    out = subprocess.run(["make", "-n", "wheel"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "rm -rf build" in out and "pip wheel --no-deps" in out and "-w dist" in out


def test_torch_pin_takes_2_13_patches_and_refuses_before_2_6():
    """CVE-2025-32434: torch.load runs code from a crafted file before 2.6; every 2.13.x patch release is allowed."""
    import tomllib
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = [Requirement(r).specifier for extra in project["optional-dependencies"].values() for r in extra
            if Requirement(r).name == "torch"]
    assert len(pins) == 2  # train and export
    for spec in pins:
        assert all(spec.contains(v) for v in ("2.6.0", "2.13.0", "2.13.0+cpu", "2.13.3"))
        assert not any(spec.contains(v) for v in ("2.4.1", "2.5.1", "2.14.0"))
