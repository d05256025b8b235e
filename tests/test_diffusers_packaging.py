"""``pip install .`` ships the host-free packages only: the core and the diffusers adapter."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("skip_tuning", "skip_tuning/diffusers")  # the core and the diffusers adapter; no other host's folder
NOT_LINKED = {".git", "build", "dist", "outputs", ".pytest_cache", ".ruff_cache", ".benchmarks"}


def build_backend_or_skip():
    setuptools = pytest.importorskip("setuptools", reason="the build backend (setuptools) is not installed")
    if int(setuptools.__version__.split(".")[0]) < 61:
        pytest.skip(f"setuptools {setuptools.__version__} cannot read [project] from pyproject.toml (61+)")


def test_the_wheel_holds_the_core_and_the_diffusers_adapter_only(tmp_path):
    build_backend_or_skip()
    # The repository seen through links, so the build's own files land in tmp_path, not in the clone.
    source = tmp_path / "source"
    source.mkdir()
    for entry in REPO_ROOT.iterdir():
        if entry.name not in NOT_LINKED and not entry.name.startswith(".venv") and not entry.name.endswith(
                ".egg-info"):
            (source / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(wheels), str(source)], capture_output=True, text=True, timeout=300)
    if build.returncode != 0:
        pytest.fail(f"pip wheel failed:\n{build.stdout}\n{build.stderr}")
    (wheel,) = wheels.glob("skip_tuning-*.whl")
    names = zipfile.ZipFile(wheel).namelist()

    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"skip_tuning", wheel.name.split("-py")[0] + ".dist-info"}, top_level
    sources = {f"{package}/{path.name}" for package in PACKAGES for path in (REPO_ROOT / package).glob("*.py")}
    shipped = {name for name in names if name.startswith("skip_tuning/")}
    assert shipped == sources, (sources - shipped, shipped - sources)
    assert not [name for name in names if name.endswith((".safetensors", ".json", ".npz", ".js"))]

    # Importable from the wheel alone, outside the repository.
    check = ("import skip_tuning, skip_tuning.diffusers\n"
             "from skip_tuning.diffusers import SkipTuningError, apply_residual_tuning, apply_skip_tuning\n"
             "assert SkipTuningError is skip_tuning.SkipTuningError\n"
             "print(skip_tuning.diffusers.__file__)")
    env = {**os.environ, "PYTHONPATH": str(wheel)}
    imported = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip().startswith(str(wheel)), imported.stdout
