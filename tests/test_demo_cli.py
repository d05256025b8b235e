"""Smoke test of the one-command demo (python3 -m skip_tuning_demo.demo) at a tiny size."""

from __future__ import annotations

import importlib.util
import os

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")
for _module in ("ldm", "diffusers", "safetensors", "PIL", "einops", "omegaconf"):
    if importlib.util.find_spec(_module) is None:
        pytest.skip(f"{_module} is not installed (needed by the demo)", allow_module_level=True)

from skip_tuning_demo.model import UNET_WEIGHTS  # noqa: E402

if not os.path.exists(UNET_WEIGHTS):
    pytest.skip("the demo model's weights are not present", allow_module_level=True)


def test_demo_writes_a_labelled_grid(tmp_path, capsys):
    from PIL import Image

    from skip_tuning_demo import demo

    rc = demo.main(["--steps", "1", "2", "--rho-bottom", "0.8", "--samples", "10", "--reference-steps", "2",
                    "--threads", "1", "--out", str(tmp_path)])
    assert rc == 0
    grid = Image.open(tmp_path / "skip_tuning_demo_grid.png")
    assert grid.width > 2 * 300 and grid.height > 2 * 100  # 2 rows (plain, 0.8) x 2 step counts + reference
    out = capsys.readouterr().out
    assert "grid:" in out
    if (tmp_path / "skip_tuning_demo_table.md").exists():  # needs the classifier weights
        table = (tmp_path / "skip_tuning_demo_table.md").read_text()
        assert "1.0 (plain)" in table and "| 2 | 0.8 |" in table


def test_demo_rejects_an_out_of_range_rho(tmp_path):
    from skip_tuning_core import SkipTuningError
    from skip_tuning_demo import demo

    with pytest.raises(SkipTuningError):
        demo.main(["--rho-bottom", "5", "--out", str(tmp_path), "--threads", "1"])
