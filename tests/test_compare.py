"""The "Skip Tuning Compare" node: list parsing, the grid, and sampling in-process.

The parsing and grid tests need only torch and Pillow. The sampling tests run the node
on a tiny seeded U-Net inside ComfyUI (skipped without a checkout) and check it against
ComfyUI's own sampler: the rho_bottom = 1 row is plain sampling, the other rows are what
sampling the Skip Tuning node's model gives, the difference grid compares each cell with
the untuned one, progress covers the sweep, cancel stops it within a step.
The same node run through a real server's /prompt is in test_frontend.py.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")
pytest.importorskip("PIL", reason="Pillow is not installed (the grid is drawn with it)")

import comfy_helpers  # noqa: E402


@pytest.fixture(scope="module")
def compare():
    """The node module, imported the way ComfyUI imports the pack (no ComfyUI needed)."""
    return comfy_helpers.load_pack().skip_tuning.comfyui.compare


# -- lists --------------------------------------------------------------------------------------


def test_parses_step_and_rho_lists(compare):
    assert compare.parse_sweep("4, 8, 16", "1.0, 0.9, 0.8") == ((4, 8, 16), (1.0, 0.9, 0.8))
    assert compare.parse_sweep(" 8 ;4 ", "[0.5]") == ((8, 4), (0.5,))
    assert compare.parse_steps_list("(2, 3)") == (2, 3)


@pytest.mark.parametrize(("steps", "rhos", "message"), [
    ("", "1.0", "steps_list is empty"),
    ("4,,8", "1.0", "entry 2 is empty"),
    ("4, 8.5", "1.0", "entry 2 ('8.5') is not a whole number"),
    ("4, -1", "1.0", "is not a whole number"),
    ("4, ²", "1.0", "is not a whole number"),
    ("0", "1.0", "must be between 1 and 10000"),
    ("20000", "1.0", "must be between 1 and 10000"),
    ("4", "", "rho_bottom_list is empty"),
    ("4", "0.9, x", "rho_bottom_list entry 2 must be a number"),
    ("4", "0.9, 2.5", "rho_bottom_list entry 2 must be between 0.0 and 2.0"),
    ("4", "0.9,", "rho_bottom_list has an empty entry"),
    ("1, 2, 3, 4, 5, 6, 7, 8, 9", "1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3", "at most 64"),
])
def test_rejects_malformed_lists_with_a_clear_message(compare, steps, rhos, message):
    with pytest.raises(compare.SkipTuningError, match=None) as caught:
        compare.parse_sweep(steps, rhos)
    assert message in str(caught.value)
    # The same check runs at /prompt time, before anything runs (the node's validate_inputs).
    with pytest.raises(compare.SkipTuningError) as caught:
        compare.check_sweep_inputs(steps_list=steps, rho_bottom_list=rhos)
    assert message in str(caught.value)


def test_validation_leaves_linked_lists_to_run_time(compare):
    compare.check_sweep_inputs(steps_list=None, rho_bottom_list=None, rho_top=None)
    compare.check_sweep_inputs(steps_list="4, 8")
    with pytest.raises(compare.SkipTuningError, match="not a whole number"):
        compare.check_sweep_inputs(steps_list="four")
    with pytest.raises(compare.SkipTuningError, match="rho_top must be finite"):
        compare.check_sweep_inputs(rho_top=float("nan"))


# -- the grid -----------------------------------------------------------------------------------


def test_grid_places_every_cell_where_its_layout_says(compare):
    generator = torch.Generator().manual_seed(0)
    cells = [[torch.rand(48, 40, 3, generator=generator) for _ in range(3)] for _ in range(2)]
    rows = [compare.rho_label(1.0, 1.0), compare.rho_label(0.8, 1.0)]
    columns = ["4 steps", "8 steps", "16 steps"]
    grid = compare.make_grid(cells, rows, columns, "seed 1, euler/normal, cfg 7, rho_top 1.00")
    layout = compare.GridLayout(2, 3, 48, 40, rows, columns, "seed 1, euler/normal, cfg 7, rho_top 1.00")

    assert grid.shape == (1, layout.size[1], layout.size[0], 3)
    assert grid.dtype == torch.float32 and 0.0 <= float(grid.min()) and float(grid.max()) <= 1.0
    for r in range(2):
        for c in range(3):
            x, y = layout.cells[r][c]
            tile = grid[0, y:y + 48, x:x + 40]
            assert torch.allclose(tile, cells[r][c], atol=0.5 / 255 + 1e-6), (r, c)
    # Labels are drawn: the label column and the header row are not plain background.
    background = torch.tensor([24, 24, 24]) / 255.0
    label_area = grid[0, layout.cells[1][0][1]:layout.cells[1][0][1] + 48, :layout.label_width]
    header_area = grid[0, layout.title_height:layout.cells[0][0][1], layout.cells[0][2][0]:]
    for area in (label_area, header_area):
        assert (area - background).abs().amax() > 0.5


def test_amplified_difference_scales_the_largest_change_to_white(compare):
    baseline = torch.full((4, 6, 3), 0.5)
    image = baseline.clone()
    image[1, 2, 0] = 0.6  # the largest change, in one channel
    image[3, 5] = 0.55
    difference, gain = compare.amplified_difference(image, baseline)
    assert difference.shape == (4, 6, 3) and gain == pytest.approx(10.0)
    assert torch.allclose(difference[1, 2], torch.ones(3)) and torch.allclose(difference[3, 5], torch.full((3,), 0.5))
    assert float(difference.sum()) == pytest.approx(1.5 * 3)
    same, gain = compare.amplified_difference(baseline, baseline)
    assert gain == 1.0 and not same.any()
    assert compare.amplification_label(10.0) == "|diff| x10" and compare.amplification_label(2.5) == "|diff| x2.5"


def test_difference_grid_has_the_grid_layout_and_tags_its_cells(compare):
    cells = [[torch.zeros(48, 40, 3) for _ in range(2)] for _ in range(2)]
    rows, columns = [compare.rho_label(1.0, 1.0), compare.rho_label(0.8, 1.0)], ["4 steps", "8 steps"]
    plain = compare.make_grid(cells, rows, columns, "title")
    tagged = compare.make_grid(cells, rows, columns, "title", [["baseline", ""], ["|diff| x12", ""]])
    layout = compare.GridLayout(2, 2, 48, 40, rows, columns, "title")
    assert tagged.shape == plain.shape == (1, layout.size[1], layout.size[0], 3)
    for r, c, written in ((0, 0, True), (1, 0, True), (0, 1, False), (1, 1, False)):
        x, y = layout.cells[r][c]
        tile = tagged[0, y:y + 48, x:x + 40]
        assert (tile.amax() > 0.5) == written, (r, c)
        assert not tile[24:].any(), "the tag stays in the corner"


def test_labels(compare):
    assert [compare.steps_label(n) for n in (1, 2, 16)] == ["1 step", "2 steps", "16 steps"]
    # rho_bottom rows: the untuned one is marked
    assert compare.rho_label(1.0, 1.0) == "rho_bottom\n1.00 (off)"
    assert compare.rho_label(1.0, 0.9) == "rho_bottom\n1.00"
    assert compare.rho_label(0.85, 1.0) == "rho_bottom\n0.85"


# -- sampling inside ComfyUI -------------------------------------------------------------------


class _TestVAE:
    """What tests/comfy_test_nodes_frontend provides to the server: channels 0-2 as RGB."""

    def decode(self, samples):
        rgb = torch.sigmoid(samples[:, :3].float())
        return torch.nn.functional.interpolate(rgb, scale_factor=8, mode="nearest").movedim(1, -1)


@pytest.fixture(scope="module")
def tiny(comfy):
    """A tiny 6-skip U-Net (cheap on CPU), its conditioning and an 8x8 latent."""
    return {
        "model": comfy_helpers.build_tiny_unet("koala", seed=3),
        "positive": comfy_helpers.tiny_conditioning(1),
        "negative": comfy_helpers.tiny_conditioning(2),
        "latent": {"samples": torch.zeros(1, 4, 8, 8)},
        "vae": _TestVAE(),
    }


def _run(node, tiny, steps_list, rho_bottom_list, rho_top=1.0, seed=5, cfg=2.0, model=None):
    """The node as ComfyUI runs it (``execute``, under inference mode); its three outputs."""
    with torch.inference_mode():
        output = node.execute(tiny["model"] if model is None else model, tiny["positive"], tiny["negative"],
                              tiny["latent"], tiny["vae"], seed, "euler", "normal", cfg, steps_list, rho_bottom_list,
                              rho_top)
    return output.result


def _reference(tiny, model, steps, seed=5, cfg=2.0):
    """What KSampler + VAE Decode give: comfy.sample.sample with the same seed and noise."""
    import comfy.sample

    latent = tiny["latent"]["samples"]
    noise = comfy.sample.prepare_noise(latent, seed)
    with torch.inference_mode():
        samples = comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", tiny["positive"],
                                      tiny["negative"], latent, seed=seed, disable_pbar=True)
    return tiny["vae"].decode(samples)


@pytest.fixture
def progress_hook(comfy):
    """Records what the node reports to ComfyUI's progress bar (the server's hook, replaced)."""
    import comfy.utils

    calls = []
    previous = comfy.utils.PROGRESS_BAR_HOOK

    def hook(value, total, preview, node_id=None, **kwargs):
        calls.append((value, total))
        if hook.on_update is not None:
            hook.on_update(value, total)

    hook.on_update = None
    hook.calls = calls
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        yield hook
    finally:
        comfy.utils.set_progress_bar_global_hook(previous)


@pytest.fixture(scope="module")
def node(comfy_nodes):
    return comfy_nodes.SkipTuningCompare


def test_sweep_matches_comfyui_sampling_with_and_without_skip_tuning(compare, node, tiny, progress_hook):
    grid, images, differences = _run(node, tiny, "1, 2", "1.0, 0.5")

    assert images.shape == (4, 64, 64, 3)  # row-major: (1.0, 1), (1.0, 2), (0.5, 1), (0.5, 2)
    rows = [compare.rho_label(1.0, 1.0), compare.rho_label(0.5, 1.0)]
    layout = compare.GridLayout(2, 2, 64, 64, rows, ["1 step", "2 steps"],
                                "seed 5, euler/normal, cfg 2, rho_top 1.00")
    assert grid.shape == (1, layout.size[1], layout.size[0], 3)

    # rho_bottom = 1 = rho_top: exactly ComfyUI's sampling of the untouched model.
    assert torch.equal(images[0], _reference(tiny, tiny["model"], 1)[0])
    assert torch.equal(images[1], _reference(tiny, tiny["model"], 2)[0])
    # rho_bottom 0.5: exactly what sampling the Skip Tuning node's model gives.
    tuned = compare.apply_skip_tuning(tiny["model"], 0.5, 1.0)
    assert torch.equal(images[3], _reference(tiny, tuned, 2)[0])
    assert not torch.equal(images[1], images[3])

    # One progress bar over the whole sweep: 2 rows x (1 + 2) steps.
    assert progress_hook.calls, "no progress reported"
    assert {total for _, total in progress_hook.calls} == {6}
    values = [value for value, _ in progress_hook.calls]
    assert values == sorted(values) and values[-1] == 6

    # Differences: the grid's layout; the plain row is the baseline (zero), the tuned row its amplified change.
    assert differences.shape == grid.shape
    for c in range(2):
        x, y = layout.cells[0][c]
        assert not differences[0, y + 32:y + 64, x:x + 64].any(), f"baseline cell {c} is not zero"
        expected, gain = compare.amplified_difference(images[2 + c], images[c])
        assert gain > 1.0
        x, y = layout.cells[1][c]
        assert torch.allclose(differences[0, y + 32:y + 64, x:x + 64], expected[32:], atol=0.5 / 255 + 1e-6)


def test_differences_without_a_plain_row_sample_the_untuned_model(compare, node, tiny, progress_hook):
    grid, images, differences = _run(node, tiny, "2", "0.5, 0.0")

    assert images.shape == (2, 64, 64, 3)  # only the requested rows
    assert differences.shape == grid.shape
    plain = _reference(tiny, tiny["model"], 2)[0]
    layout = compare.GridLayout(2, 1, 64, 64, [compare.rho_label(0.5, 1.0), compare.rho_label(0.0, 1.0)],
                                ["2 steps"], "seed 5, euler/normal, cfg 2, rho_top 1.00")
    for r in range(2):
        expected, _ = compare.amplified_difference(images[r], plain)
        x, y = layout.cells[r][0]
        assert torch.allclose(differences[0, y + 32:y + 64, x:x + 64], expected[32:], atol=0.5 / 255 + 1e-6), r
    # The extra plain row is part of the sweep's progress: 3 rows x 2 steps.
    assert {total for _, total in progress_hook.calls} == {6}


def test_cancel_stops_the_sweep_within_a_step(node, tiny):
    """ComfyUI's Cancel (its interrupt flag) set during the third model call of a 24-step sweep: no fourth
    call starts. (The server-side version, POST /interrupt, is in test_comfyui_server.py.)"""
    import comfy.model_management

    calls = []

    def counting(apply_model, args):
        calls.append(float(args["timestep"].reshape(-1)[0]))
        if len(calls) == 3:
            comfy.model_management.interrupt_current_processing(True)
        return apply_model(args["input"], args["timestep"], **args["c"])

    model = tiny["model"].clone()
    model.set_model_unet_function_wrapper(counting)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            _run(node, tiny, "4, 4", "1.0, 0.5, 0.0", seed=6, model=model)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert len(calls) == 3, calls


def test_bad_input_fails_before_any_sampling(compare, node, tiny, monkeypatch):
    import comfy.sample

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampling started")

    monkeypatch.setattr(comfy.sample, "sample", no_sampling)
    with pytest.raises(compare.SkipTuningError, match="steps_list"):
        _run(node, tiny, "4, eight", "1.0")
    with pytest.raises(compare.SkipTuningError, match="rho_top"):
        _run(node, tiny, "4", "1.0", rho_top=3.0)
    with pytest.raises(compare.SkipTuningError, match="no long skips|has none"):
        _run(node, tiny, "4", "1.0, 0.8", model=comfy_helpers.build_tiny_flux())
