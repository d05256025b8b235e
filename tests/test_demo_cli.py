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

    rc = demo.main(["--compare", "euler_a:1:1:0.6", "dpmpp_2m:4:2:1.2", "--samples", "10", "--threads", "1",
                    "--out", str(tmp_path)])
    assert rc == 0
    grid = Image.open(tmp_path / "skip_tuning_demo_grid.png")
    assert grid.width > 3 * 300 and grid.height > 2 * 130  # 2 rows x (plain, tuned, difference)
    out = capsys.readouterr().out
    assert "grid:" in out
    if (tmp_path / "skip_tuning_demo_table.md").exists():  # needs the classifier weights
        table = (tmp_path / "skip_tuning_demo_table.md").read_text()
        assert "| Euler ancestral, no guidance, 1 step | 0.6 |" in table
        assert "| DPM++ 2M, CFG 4, 2 steps | 1.2 |" in table and "95% interval" in table


def test_default_comparisons_are_the_measured_ones():
    """Weaker skips unguided at 4 steps, stronger skips guided at more steps (docs/results.md)."""
    from skip_tuning_demo import demo

    comparisons = demo.parse_args([]).compare
    assert any(c.cfg == 1.0 and c.steps == 4 and c.rho_bottom < 1 for c in comparisons)
    assert any(c.cfg > 1.0 and c.steps > 4 and c.rho_bottom > 1 for c in comparisons)


def test_amplified_difference_makes_the_largest_change_white():
    from skip_tuning_demo import demo

    plain = torch.zeros(2, 1, 4, 4)
    tuned = plain.clone()
    tuned[0, 0, 1, 1] = 0.1  # a twentieth of the -1..1 range: shown 20 times larger
    tuned[1, 0, 2, 2] = -0.05
    pixels, factor = demo.amplified_difference(tuned, plain)
    assert factor == pytest.approx(20.0)
    assert pixels[0, 1, 1] == 255 and pixels[1, 2, 2] == 128 and pixels.sum() == 255 + 128
    assert demo.amplified_difference(plain, plain)[1] == 1.0


@pytest.mark.parametrize("text", ["euler_a:1:4", "euler_x:1:4:0.6", "euler_a:1:four:0.6", "euler_a:1:4:5",
                                  "euler_a:1:4:1.0", "euler_a:-1:4:0.6"])
def test_demo_rejects_a_malformed_comparison(tmp_path, text):
    from skip_tuning_demo import demo

    with pytest.raises(SystemExit):
        demo.main(["--compare", text, "--out", str(tmp_path), "--threads", "1"])
