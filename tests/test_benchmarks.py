"""Cheap checks of the benchmark scripts (benchmarks/): statistics, plans, the A1111-path driver.

The benchmarks themselves are not tests; these only guard the pieces their numbers rest on.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")
np = pytest.importorskip("numpy", reason="numpy is not installed")

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
if BENCHMARKS not in sys.path:
    sys.path.insert(0, BENCHMARKS)

import _common  # noqa: E402

HAVE_SCIPY = importlib.util.find_spec("scipy") is not None
HAVE_DEMO_DEPS = all(importlib.util.find_spec(m) is not None for m in ("ldm", "diffusers", "safetensors", "scipy"))


@pytest.mark.skipif(not HAVE_SCIPY, reason="scipy is not installed")
def test_fast_frechet_distance_matches_scipy_reference():
    from _stats import Reference

    from skip_tuning_demo.metrics import feature_stats, frechet_distance

    rng = np.random.default_rng(0)
    ref_features = rng.normal(size=(600, 16)) @ rng.normal(size=(16, 16))
    features = rng.normal(0.3, 1.2, size=(400, 16)) @ rng.normal(size=(16, 16))
    mu_r, sigma_r = feature_stats(ref_features)
    mu, sigma = feature_stats(features)
    expected = frechet_distance(mu, sigma, mu_r, sigma_r)
    assert Reference(mu_r, sigma_r).fd(features) == pytest.approx(expected, rel=1e-6)
    assert Reference(mu_r, sigma_r).fd(ref_features) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.skipif(not HAVE_SCIPY, reason="scipy is not installed")
def test_paired_bootstrap_of_identical_runs_is_zero():
    from _stats import Reference, paired_bootstrap

    rng = np.random.default_rng(1)
    features = rng.normal(size=(200, 8))
    ref = Reference(np.zeros(8), np.eye(8))
    fd_a, fd_b, diffs = paired_bootstrap(ref, features, features.copy(), n_boot=20)
    assert fd_a == fd_b
    assert np.all(diffs == 0)


def test_equal_quality_interpolates_in_log_steps():
    from quality_report import describe_match, equal_quality_steps

    plain = {4: 40.0, 8: 20.0, 16: 10.0, 50: 5.0}
    kind, steps = equal_quality_steps(plain, 15.0)
    assert kind == "at" and steps == pytest.approx(math.sqrt(8 * 16))
    assert equal_quality_steps(plain, 50.0) == ("below", 4)
    assert equal_quality_steps(plain, 1.0) == ("above", 50)
    assert "2.0x" in describe_match(("at", 12.0), 6)


@pytest.mark.skipif(not HAVE_SCIPY, reason="scipy is not installed")
def test_report_answers_equal_quality_when_skip_tuning_loses(tmp_path, monkeypatch):
    """A store where rho 0.8 is worse than plain: the report says so and still gives the step figure."""
    import quality_report
    from quality import config_key

    dim, n = 4, 200
    monkeypatch.setattr(quality_report, "reference", lambda: (np.zeros(dim), np.eye(dim)))
    (tmp_path / "samples").mkdir()
    labels = (np.arange(n) % 10).astype(np.int8)

    def store(steps, rho, block, offset):
        rng = np.random.default_rng(block)  # the same "seeds" for every configuration of a block
        features = rng.standard_normal((n, dim)) + offset
        np.savez(tmp_path / "samples" / (config_key("diffusers", "dpmpp_2m", steps, 4.0, rho, block, n) + ".npz"),
                 features=features, predictions=labels, labels=labels, seconds=1.0)

    for block in (0, 1):
        for steps in (4, 6, 8, 10, 15, 25, 50):
            store(steps, 1.0, block, 2.0 / steps)
        for steps in (6, 10):
            store(steps, 0.8, block, 2.0 / steps + 0.5)
    report = quality_report.Report(quality_report.Store(str(tmp_path)), "diffusers")
    best = report.screen()
    rows = report.confirm(best)
    assert [(r["steps"], r["rho"], r["verdict"]) for r in rows] == [(6, 0.8, "worse"), (10, 0.8, "worse")]
    _, results = report.curves(rows)
    assert [(r["steps"], r["match"][0]) for r in results] == [(6, "below"), (10, "below")]
    assert "| 4 | DPM++ 2M | 6 (0.80) |" in "\n".join(report.lines)


@pytest.mark.skipif(not HAVE_SCIPY, reason="scipy is not installed")
def test_report_compares_on_the_seeds_both_sides_share(tmp_path, monkeypatch):
    """6- and 10-step cells confirmed on 3 fresh blocks, the other step counts on 1: every FD pair the report
    compares (headline row, step curve, equal-quality figure) uses one set of seeds."""
    import quality_report
    from quality import config_key

    dim, n = 4, 100
    monkeypatch.setattr(quality_report, "reference", lambda: (np.zeros(dim), np.eye(dim)))
    (tmp_path / "samples").mkdir()
    labels = (np.arange(n) % 10).astype(np.int8)

    def store(steps, rho, block, offset):
        features = np.random.default_rng(block).standard_normal((n, dim)) + offset
        np.savez(tmp_path / "samples" / (config_key("diffusers", "unipc", steps, 4.0, rho, block, n) + ".npz"),
                 features=features, predictions=labels, labels=labels, seconds=1.0)

    for steps in (4, 6, 8, 10, 15, 25):
        blocks = (0, 1, 2, 3) if steps in (6, 10) else (0, 1)
        for block in blocks:
            store(steps, 1.0, block, 4.0 / steps)
            store(steps, 0.8, block, 4.0 / steps - 0.1)
        store(steps, 0.9, 0, 4.0 / steps + 0.1)  # screened only
    report = quality_report.Report(quality_report.Store(str(tmp_path)), "diffusers")
    rows = report.confirm(report.screen())
    assert {r["steps"]: (r["rho"], r["n"]) for r in rows} == {
        4: (0.8, n), 6: (0.8, 3 * n), 8: (0.8, n), 10: (0.8, 3 * n), 15: (0.8, n), 25: (0.8, n)}
    curves, results = report.curves(rows)
    assert sorted(curves[("unipc", 4.0)]) == [4, 6, 8, 10, 15, 25]
    assert report.curve_samples[("unipc", 4.0)] == n  # block 1 is the only one plain has at every step count
    assert [(r["steps"], r["n"]) for r in results] == [(4, n), (6, n), (10, n)]


def test_seed_blocks_are_balanced_deterministic_and_distinct():
    from quality import block_seeds

    labels0, noise0, step0 = block_seeds(0, 250)
    again, _, _ = block_seeds(0, 250)
    labels1, noise1, step1 = block_seeds(1, 250)
    assert torch.equal(labels0, again)
    assert torch.bincount(labels0, minlength=10).tolist() == [25] * 10
    assert not torch.equal(labels0, labels1)
    assert len({noise0, noise1, step0, step1}) == 4


def test_presets_plan_the_specified_grid():
    from quality import ALL_RHOS, ALL_SAMPLERS, ALL_STEPS, PRESETS, nfe, plan

    full = plan(PRESETS["full"], "/nonexistent", "diffusers", 0)
    assert len(full) == len(ALL_SAMPLERS) * len(ALL_STEPS) * 2 * len(ALL_RHOS) * 4
    assert {job.rho for job in full} >= {0.6, 1.0, 1.2}
    assert nfe("heun", 10) == 19 and nfe("euler", 10) == 10
    # the headline preset screens the whole grid (on one seed block)
    headline = PRESETS["headline"]
    screened = {job[:4] for i in range(len(headline["stages"]))
                for job in plan(headline, "/nonexistent", "diffusers", i) if job[4] == 0}
    assert screened >= {(s, n, c, r) for s in ALL_SAMPLERS for n in ALL_STEPS for c in (1.0, 4.0) for r in ALL_RHOS}
    # "best" stages fall back to plain when nothing has been screened yet
    confirm = plan(PRESETS["headline"], "/nonexistent", "diffusers", 1)
    assert confirm and all(job.rho == 1.0 for job in confirm)


def test_peak_tensor_memory_counts_live_storage():
    x = torch.ones(1000, 250)  # 1 MB, made before tracking: not counted
    with _common.PeakTensorMemory() as tracker:
        a = x * 2
        b = a * 3
        del a
        c = torch.cat([b, b])
        del b, c
    assert tracker.peak == 3 * x.nbytes
    assert tracker.live == 0


@pytest.mark.comfyui
def test_sgm_style_loop_matches_comfy_and_both_adapter_paths_agree(comfy):
    """The A1111-path driver of overhead.py computes ComfyUI's forward, and hooks == patch."""
    import comfy_helpers
    import overhead

    from skip_tuning import SkipScalingHooks, make_output_block_patch, rho_schedule

    unet = comfy_helpers.build_tiny_unet("sdxl", seed=3).model.diffusion_model
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    t = torch.tensor([100.0, 700.0])
    context = torch.randn(2, comfy_helpers.CONTEXT_TOKENS, comfy_helpers.CONTEXT_DIM, generator=gen)
    rhos = rho_schedule(len(unet.output_blocks), 0.7)
    with torch.inference_mode():
        native = unet(x, t, context, transformer_options={})
        driven = overhead.sgm_style_forward(unet, x, t, context)
        patched = unet(x, t, context, transformer_options={"patches": {
            "output_block_patch": [make_output_block_patch(rhos)]}})
        with SkipScalingHooks(unet, rhos):
            hooked = overhead.sgm_style_forward(unet, x, t, context)
    torch.testing.assert_close(driven, native, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hooked, patched, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(hooked, native)


@pytest.mark.comfyui
@pytest.mark.skipif(not HAVE_DEMO_DEPS, reason="needs ldm, diffusers, safetensors and scipy")
def test_demo_model_in_comfy_matches_ldm(comfy):
    from skip_tuning_demo.model import UNET_WEIGHTS

    if not os.path.exists(UNET_WEIGHTS):
        pytest.skip("demo weights not present")
    from _comfy_demo import load_demo_in_comfy

    patcher, ldm_unet, table, _ = load_demo_in_comfy()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 16, 16, generator=gen)
    t = torch.tensor([10.0, 500.0, 990.0])
    context = table[[0, 5, 10]]
    with torch.inference_mode():
        torch.testing.assert_close(patcher.model.diffusion_model(x, t, context), ldm_unet(x, t, context=context),
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.comfyui
@pytest.mark.skipif(not HAVE_DEMO_DEPS, reason="needs ldm, diffusers, safetensors and scipy")
def test_demo_uvit_in_comfy_matches_the_direct_path(comfy):
    """The benchmark's two U-ViT paths compute the same network, plain and tuned."""
    from skip_tuning import find_skip_layout, rho_schedule, with_skip_replace_patches
    from skip_tuning_demo.uvit import UVIT_WEIGHTS, UViTDenoiser

    if not os.path.exists(UVIT_WEIGHTS):
        pytest.skip("demo U-ViT weights not present")
    from _comfy_demo import load_uvit_in_comfy

    patcher, net, table, _ = load_uvit_in_comfy()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 16, 16, generator=gen)
    t = torch.tensor([10.0, 500.0, 990.0])
    context = table[[0, 5, 10]]
    layout = find_skip_layout(net)
    tuned_options = with_skip_replace_patches({}, layout.replace_keys, rho_schedule(layout.n_skips, 0.7))
    with torch.inference_mode():
        for options in ({}, tuned_options):
            torch.testing.assert_close(UViTDenoiser(patcher.model.diffusion_model, options)(x, t, context),
                                       UViTDenoiser(net, options)(x, t, context), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(UViTDenoiser(net, tuned_options)(x, t, context), UViTDenoiser(net)(x, t, context))


def test_schedulers_preset_orders_cells_and_names_the_scheduler():
    """The schedulers preset: tier 1 is the U-Net with the optimized schedules against karras and normal, 4 steps
    first, each screen followed by its confirmation; keys name every scheduler but KSampler's default."""
    from quality import PRESETS, config_key, plan

    preset = PRESETS["schedulers"]
    stages = preset["stages"]
    tiers = [stage["tier"] for stage in stages]
    assert tiers == sorted(tiers)
    first = [stage for stage in stages if stage["tier"] == 1]
    assert {s for stage in first for s in stage["schedulers"]} == {"ays", "gits", "karras", "normal"}
    assert all(stage["models"] == ["unet"] for stage in first)
    assert [stage["steps"] for stage in first[:8]] == [[4]] * 8
    assert [stage["rhos"] == "best" for stage in first[:4]] == [False, True, False, True]
    jobs = plan(preset, "/nonexistent", "comfy", 0)
    assert {job.scheduler for job in jobs} == {"ays"} and {job.block for job in jobs} == {0}
    assert {job.rho for job in jobs} >= {0.6, 1.0, 1.1}
    assert config_key("comfy", "euler", 4, 1.0, 1.0, 0, 250) == "comfy_euler_s4_cfg1_rho1.00_b0_n250"
    assert config_key("comfy", "euler", 4, 1.0, 1.0, 0, 250, "ays").endswith("_n250_ays")
    # the confirmation falls back to plain only while nothing has been screened
    assert [job.rho for job in plan(preset, "/nonexistent", "comfy", 1)] == [1.0]
    # a comparison across schedules waits for the schedules of the cell's first tier
    from schedulers_report import planned_schedules

    first_four = {"ays", "gits", "karras", "normal"}
    assert planned_schedules(preset, "unet")[("euler", 4, 1.0)] == first_four
    assert planned_schedules(preset, "uvit")[("euler_a", 4, 4.0)] == first_four
    assert ("euler_a", 10, 4.0) not in planned_schedules(preset, "uvit")  # guided 6 and 10 steps: the U-Net only
    assert planned_schedules(preset, "uvit")[("euler_a", 10, 1.0)] == {"ays", "gits"}  # tier 7
    assert planned_schedules(preset, "unet")[("euler_a", 10, 4.0)] == first_four
    assert planned_schedules(preset, "unet")[("deis", 4, 4.0)] == {"normal", "ays"}
    assert ("deis", 4, 4.0) not in planned_schedules(preset, "uvit")
    # a table tells a cell left out of the grid from one not run yet
    from schedulers_report import grid_cells

    grid = grid_cells(preset, "uvit")
    assert ("gits", "dpmpp_2m", 10, 1.0) in grid and ("normal", "dpmpp_2m", 10, 1.0) not in grid
    assert ("kl_optimal", "euler", 4, 1.0) in grid_cells(preset, "unet") and ("kl_optimal", "euler", 4, 1.0) not in grid


@pytest.mark.skipif(not HAVE_SCIPY, reason="scipy is not installed")
def test_schedulers_report_confirms_per_schedule_and_compares_across(tmp_path, monkeypatch):
    """Two schedules sharing seeds: each confirms its own screened best rho on the fresh block, the Store reads one
    schedule at a time, an unconfirmed cell is pending, and the best Skip-Tuned setting is compared with the best
    plain schedule on the fresh seeds."""
    import schedulers_report
    from quality import config_key
    from quality_report import Store

    dim, n = 4, 200
    monkeypatch.setattr(schedulers_report, "reference", lambda: (np.zeros(dim), np.eye(dim)))
    (tmp_path / "samples").mkdir()
    labels = (np.arange(n) % 10).astype(np.int8)

    def store(scheduler, steps, rho, block, offset, sampler="euler"):
        features = np.random.default_rng(block).standard_normal((n, dim)) + offset
        key = config_key("comfy", sampler, steps, 1.0, rho, block, n, scheduler)
        np.savez(tmp_path / "samples" / (key + ".npz"), features=features, predictions=labels, labels=labels,
                 seconds=1.0)

    # normal: 0.8 helps at 4 steps; ays: plain is better already and 1.1 helps a little more
    for block in (0, 1):
        store("normal", 4, 1.0, block, 1.0)
        store("normal", 4, 0.8, block, 0.6)
        store("ays", 4, 1.0, block, 0.5)
        store("ays", 4, 1.1, block, 0.4)
    store("ays", 4, 0.8, 0, 0.9)
    for steps, offset in ((6, 0.3), (10, 0.2)):
        store("normal", steps, 1.0, 1, offset)
        store("ays", steps, 1.0, 1, offset - 0.1)
    store("karras", 4, 1.0, 0, 0.7)  # screened only: pending
    store("karras", 4, 0.8, 0, 0.6)
    assert sorted(Store(str(tmp_path)).values("rho")) == [0.8, 1.0]
    assert sorted(Store(str(tmp_path), "ays").values("rho")) == [0.8, 1.0, 1.1]

    m = schedulers_report.ModelResults(str(tmp_path), schedulers_report.Reference(np.zeros(dim), np.eye(dim)))
    assert list(m.stores) == ["normal", "karras", "ays"]
    normal = m.confirmed("normal", "euler", 4, 1.0)
    ays = m.confirmed("ays", "euler", 4, 1.0)
    assert (normal["rho"], normal["verdict"]) == (0.8, "better")
    assert (ays["rho"], ays["verdict"]) == (1.1, "better")
    assert m.confirmed("karras", "euler", 4, 1.0) is None

    report = schedulers_report.Report({"unet": m})
    rows, tops = report.run()
    assert report.data["pending"] == [("unet", "karras", "euler", 4, 1.0)]
    assert report.data["same_rho"]["unet"]["ays"] == dict(cells=1, same=0, same_side=0, base_held=1, both_held=1)
    assert tops == []  # karras is screened but not confirmed: no claim across schedules yet
    for block in (1,):
        store("karras", 4, 1.0, block, 0.7)
        store("karras", 4, 0.8, block, 0.6)
    report = schedulers_report.Report({"unet": schedulers_report.ModelResults(
        str(tmp_path), schedulers_report.Reference(np.zeros(dim), np.eye(dim)))})
    _, tops = report.run()
    (top,) = tops
    assert (top["plain_scheduler"], top["tuned_scheduler"], top["rho"], top["verdict"]) == ("ays", "ays", 1.1, "better")
    assert top["match"][0] == "at" and top["match_scheduler"] == "ays"  # between 4 and 6 plain AYS steps
    assert "| U-Net (bundled) | 1 | Euler | 4 | 3 | AlignYourSteps (SD1): " in "\n".join(report.lines)
    rows = report.data["cells"]
    assert schedulers_report.plot_deltas(rows, str(tmp_path / "delta.png"), "unet")
    assert not schedulers_report.plot_steps(report.models, rows, str(tmp_path / "steps.png"), "unet")  # one step count
    for scheduler in ("normal", "ays"):  # a second step count confirmed: the step-curve figure
        store(scheduler, 6, 1.0, 0, 0.3)
        for block in (0, 1):
            store(scheduler, 6, 0.8, block, 0.2)
    report = schedulers_report.Report({"unet": schedulers_report.ModelResults(
        str(tmp_path), schedulers_report.Reference(np.zeros(dim), np.eye(dim)))})
    report.run()
    assert schedulers_report.plot_steps(report.models, report.data["cells"], str(tmp_path / "steps.png"), "unet")
    assert (tmp_path / "delta.png").stat().st_size > 0 and (tmp_path / "steps.png").stat().st_size > 0


@pytest.mark.comfyui
def test_optimized_schedules_are_the_nodes_sigmas_run_as_sampler_custom(comfy):
    """AlignYourSteps and GITS sigmas come from ComfyUI's own nodes, and the custom-sigmas path (SamplerCustom's
    comfy.sample.sample_custom) given KSampler's own sigmas reproduces KSampler."""
    import comfy.sample
    import comfy.samplers
    import comfy_helpers
    from _comfy_demo import optimized_sigmas

    ays = optimized_sigmas("ays", 4)
    gits = optimized_sigmas("gits", 6)
    assert len(ays) == 5 and len(gits) == 7 and ays[-1] == 0 and gits[-1] == 0
    assert float(ays[0]) == pytest.approx(14.6146, abs=1e-3) and torch.all(ays[1:] < ays[:-1])
    assert not torch.allclose(optimized_sigmas("ays", 6), gits)
    with pytest.raises(ValueError):
        optimized_sigmas("ays_sdxl", 4)

    patcher = comfy_helpers.build_tiny_unet("sd1", seed=1)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 4, 8, 8, generator=gen)
    cond = [[torch.randn(1, comfy_helpers.CONTEXT_TOKENS, comfy_helpers.CONTEXT_DIM, generator=gen), {}]]
    latent = torch.zeros_like(noise)
    ksampler = comfy.sample.sample(patcher, noise, 3, 1.0, "euler", "karras", cond, cond, latent, seed=0,
                                   disable_pbar=True)
    sigmas = comfy.samplers.calculate_sigmas(patcher.get_model_object("model_sampling"), "karras", 3)
    custom = comfy.sample.sample_custom(patcher, noise, 1.0, comfy.samplers.sampler_object("euler"), sigmas, cond,
                                        cond, latent, seed=0, disable_pbar=True)
    torch.testing.assert_close(custom, ksampler)
