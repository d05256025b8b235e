"""Skip Tuning on ComfyUI's U-ViTs (HunyuanDiT 1.x, Hunyuan3D 2.1), in process, in the real classes.

Tiny instances with the released models' depths (40 blocks and 19 skips; 21 blocks and 10
skips) are sampled through ``comfy.sample.sample``. Forward hooks on the network's own blocks
record each skip as it is pushed and as its consuming block receives it, so the factor is
measured where the block combines it, never read from the node's internals.
"""

import logging

import comfy_helpers as ch
import pytest
import torch

pytestmark = pytest.mark.comfyui

STEPS = 3


@pytest.fixture(scope="module")
def nodes(skip_tuning_pack):
    return skip_tuning_pack.skip_tuning.comfyui.adapter


@pytest.fixture(scope="module")
def tiny(comfy):
    cache = {}

    def get(kind, dtype=torch.float32):
        if (kind, dtype) not in cache:
            cache[(kind, dtype)] = (ch.build_tiny_hunyuan_dit(dtype=dtype) if kind == "hunyuan_dit"
                                    else ch.build_tiny_hunyuan3d())
        return cache[(kind, dtype)]

    return get


def run(kind, model, steps=STEPS):
    if kind == "hunyuan_dit":
        return ch.sample(model, positive=ch.hunyuan_dit_conditioning(1), negative=ch.hunyuan_dit_conditioning(2),
                         steps=steps)
    return ch.sample_hunyuan3d(model, steps=steps)


def expected_rho(n, bottom, top, i):
    return bottom + (top - bottom) * i / (n - 1) if i < n - 1 else top


def foreign_patch(log, name):
    """A replace patch another node might register: notes the skip it got and runs the block."""
    def patch(args, extra):
        log.append((name, args["skip"].detach().clone()))
        return extra["original_block"](args)
    return patch


KINDS = ["hunyuan_dit", "hunyuan3d_2_1"]


@pytest.mark.parametrize("kind", KINDS)
def test_layout_reads_the_skip_count_and_the_consuming_blocks(kind, tiny, skip_tuning_pack):
    layout = skip_tuning_pack.skip_tuning.find_skip_layout(tiny(kind).model.diffusion_model)
    n = ch.TINY_UVIT_SKIPS[kind]
    assert layout.n_skips == n and layout.mechanism == "dit_replace_patch"
    first = {"hunyuan_dit": ("double_block", 21), "hunyuan3d_2_1": ("block", 11)}[kind]
    assert layout.replace_keys[0] == first and len(layout.replace_keys) == n
    assert layout.replace_keys[-1][1] == len(tiny(kind).model.diffusion_model.blocks) - 1


@pytest.mark.parametrize("kind", KINDS)
def test_each_skip_reaches_its_block_scaled_by_its_rho(kind, tiny, comfy_nodes):
    n = ch.TINY_UVIT_SKIPS[kind]
    tuned = comfy_nodes.SkipTuning.execute(tiny(kind), 0.6, 1.3)[0]
    with ch.uvit_skip_probe(tuned) as calls:
        run(kind, tuned)
    assert len(calls) == STEPS
    for call in calls:
        assert sorted(call) == list(range(n))
        for index, (pushed, received) in call.items():
            rho = expected_rho(n, 0.6, 1.3, index)
            assert torch.equal(received, pushed * rho), (index, rho)
    ratios = {index: [float((r.double() * p.double()).sum() / (p.double() ** 2).sum()) for call in calls
                      for p, r in [call[index]]] for index in range(n)}
    ch.MEASURED_RHOS[f"{kind} (N={n}, rho_bottom=0.6, rho_top=1.3)"] = [
        (index, expected_rho(n, 0.6, 1.3, index), min(ratios[index]), max(ratios[index])) for index in range(n)]


@pytest.mark.parametrize("kind", KINDS)
def test_rho_one_is_bit_identical_and_the_base_model_is_untouched(kind, tiny, comfy_nodes):
    base = tiny(kind)
    options_before = repr(base.model_options)
    wrappers_before = repr(base.wrappers)
    reference = run(kind, base)
    with ch.uvit_skip_probe(base) as calls:
        run(kind, base, steps=1)
    assert all(torch.equal(p, r) for call in calls for p, r in call.values()), "the probe sees plain skips"

    neutral = comfy_nodes.SkipTuningAdvanced.execute(base, 1.0, 1.0, 0.2, 0.8, "", False)[0]
    tuned = comfy_nodes.SkipTuning.execute(base, 0.7, 1.0)[0]
    assert neutral is not base and tuned is not base
    assert torch.equal(run(kind, neutral), reference)
    tuned_sample = run(kind, tuned)
    assert not torch.equal(tuned_sample, reference)

    assert repr(base.model_options) == options_before and repr(base.wrappers) == wrappers_before
    assert "dit" not in base.model_options["transformer_options"].get("patches_replace", {})
    assert torch.equal(run(kind, base), reference), "sampling the base model again is unchanged"
    assert torch.equal(run(kind, tuned), tuned_sample), "no state carried between runs"


@pytest.mark.parametrize("order", ["foreign_first", "skip_tuning_first"])
def test_chains_with_a_foreign_replace_patch_on_the_same_block(order, tiny, comfy_nodes):
    base = tiny("hunyuan_dit")
    key = ("double_block", 21)  # the block that consumes the deepest skip
    log = []
    if order == "foreign_first":
        model = base.clone()
        model.set_model_patch_replace(foreign_patch(log, "foreign"), "dit", "double_block", 21)
        model = comfy_nodes.SkipTuning.execute(model, 0.5, 1.0)[0]
    else:
        model = comfy_nodes.SkipTuning.execute(base, 0.5, 1.0)[0].clone()
        model.set_model_patch_replace(foreign_patch(log, "foreign"), "dit", "double_block", 21)
    assert key in model.model_options["transformer_options"]["patches_replace"]["dit"]
    with ch.uvit_skip_probe(model) as calls:
        run("hunyuan_dit", model)
    assert len(log) == STEPS, "the foreign patch still runs at every step"
    for call, (_, seen_by_foreign) in zip(calls, log):
        pushed, received = call[0]
        assert torch.equal(received, pushed * 0.5) and torch.equal(seen_by_foreign, received)
        for index in range(1, 19):  # the other skips are tuned as well
            pushed, received = call[index]
            assert torch.equal(received, pushed * expected_rho(19, 0.5, 1.0, index))


def test_two_skip_tuning_nodes_multiply(tiny, comfy_nodes):
    once = comfy_nodes.SkipTuning.execute(tiny("hunyuan3d_2_1"), 0.5, 1.0)[0]
    model = comfy_nodes.SkipTuning.execute(once, 0.8, 0.8)[0]
    with ch.uvit_skip_probe(model) as calls:
        run("hunyuan3d_2_1", model, steps=2)
    for call in calls:
        for index, (pushed, received) in call.items():
            # Both factors, to the last bit in either order of the two multiplications.
            torch.testing.assert_close(received, pushed * expected_rho(10, 0.5, 1.0, index) * 0.8,
                                       rtol=2e-7, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_sampling_window_switches_at_the_expected_steps(kind, tiny, comfy_nodes):
    import comfy.samplers

    base = tiny(kind)
    steps, start, end, rho = 8, 0.3, 0.7, 0.5
    sampling = base.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, "simple", steps)[:-1].tolist()
    sigma_high, sigma_low = sampling.percent_to_sigma(start), sampling.percent_to_sigma(end)
    expected_on = [sigma_low <= sigma <= sigma_high for sigma in sigmas]
    assert any(expected_on) and not all(expected_on), expected_on

    model = comfy_nodes.SkipTuningAdvanced.execute(base, rho, rho, start, end, "", True)[0]
    with ch.uvit_skip_probe(model) as calls:
        run(kind, model, steps=steps)
    assert len(calls) == steps  # Euler: one model call per step, cond and uncond batched
    observed_on = []
    for call in calls:
        on = {not torch.equal(received, pushed) for pushed, received in call.values()}
        assert len(on) == 1, "every skip of one call is tuned, or none"
        observed_on.append(on.pop())
        for pushed, received in call.values():
            assert torch.equal(received, pushed * rho if observed_on[-1] else pushed)
    assert observed_on == expected_on
    ch.MEASURED_WINDOWS[f"{kind}, {steps} steps, window {start}-{end}"] = [
        (k, round(sigma, 4), flag) for k, (sigma, flag) in enumerate(zip(sigmas, observed_on))]


def test_rho_per_skip_uses_the_models_count(tiny, comfy_nodes):
    factors = [round(0.5 + 0.05 * i, 2) for i in range(10)]
    model = comfy_nodes.SkipTuningAdvanced.execute(tiny("hunyuan3d_2_1"), 0.8, 1.0, 0.0, 1.0,
                                              ", ".join(map(str, factors)), True)[0]
    with ch.uvit_skip_probe(model) as calls:
        run("hunyuan3d_2_1", model, steps=1)
    for index, (pushed, received) in calls[0].items():
        assert torch.equal(received, pushed * factors[index])
    with pytest.raises(ValueError, match="this model has 19 long skips; give 19 values"):
        comfy_nodes.SkipTuningAdvanced.execute(tiny("hunyuan_dit"), 0.8, 1.0, 0.0, 1.0, ", ".join(["1"] * 12), True)
    with pytest.raises(ValueError, match="this model has 10 long skips; give 10 values"):
        comfy_nodes.SkipTuningAdvanced.execute(tiny("hunyuan3d_2_1"), 0.8, 1.0, 0.0, 1.0, "1, 1, 1", True)


def test_bf16_model_keeps_its_dtype(tiny, comfy_nodes):
    base = tiny("hunyuan_dit", torch.bfloat16)
    assert base.model.get_dtype() == torch.bfloat16
    model = comfy_nodes.SkipTuning.execute(base, 0.7, 1.0)[0]
    with ch.uvit_skip_probe(model) as calls:
        out = run("hunyuan_dit", model, steps=2)
    assert out.isfinite().all()
    for call in calls:
        for index, (pushed, received) in call.items():
            assert pushed.dtype == received.dtype == torch.bfloat16
            assert torch.equal(received, pushed * expected_rho(19, 0.7, 1.0, index))


def test_controlnet_residual_scaled_or_kept(tiny, comfy_nodes):
    """HunyuanDiT adds ControlNet's residual to the skip before the block: scaled with it, or kept whole."""
    base = tiny("hunyuan_dit")
    residuals = [torch.full((2, 16, 32), 0.25 * (k + 1)) for k in range(19)]

    def with_control(model):
        """An outer APPLY_MODEL wrapper that hands the model what a ControlNet would: one residual per skip."""
        def wrapper(executor, x, t, c_concat, c_crossattn, control, transformer_options, *args, **kwargs):
            return executor(x, t, c_concat, c_crossattn, {"output": list(residuals)}, transformer_options,
                            *args, **kwargs)
        model = model.clone()
        model.add_wrapper_with_key("apply_model", "test_controlnet", wrapper)
        return model

    for scale_controlnet in (True, False):
        model = comfy_nodes.SkipTuningAdvanced.execute(with_control(base), 0.5, 0.5, 0.0, 1.0, "", scale_controlnet)[0]
        with ch.uvit_skip_probe(model) as calls:
            run("hunyuan_dit", model, steps=1)
        for index, (pushed, received) in calls[0].items():
            residual = residuals[18 - index]
            with_residual = pushed + residual
            expected = with_residual * 0.5 if scale_controlnet else with_residual * 0.5 + residual * 0.5
            torch.testing.assert_close(received, expected, rtol=0, atol=1e-6)


def test_compare_node_reads_the_uvit_skip_count(tiny, skip_tuning_pack):
    assert skip_tuning_pack.skip_tuning.comfyui.compare.check_model(tiny("hunyuan_dit")) == 19
    assert skip_tuning_pack.skip_tuning.comfyui.compare.check_model(tiny("hunyuan3d_2_1")) == 10


def test_log_names_the_architecture(tiny, caplog, comfy_nodes):
    with caplog.at_level(logging.INFO, logger="skip_tuning"):
        comfy_nodes.SkipTuning.execute(tiny("hunyuan_dit"), 0.8, 1.0)
    assert "(HunyuanDiT), 19 long skips" in caplog.text


def test_without_model_wrappers_the_uvit_passes_through_with_a_warning(tiny, nodes, monkeypatch, caplog, comfy_nodes):
    """A ComfyUI from before model wrappers (2024-12): nothing can reach the skips per call."""
    monkeypatch.setattr(nodes, "model_wrapper_type", lambda model, name: None)
    base = tiny("hunyuan_dit")
    with caplog.at_level(logging.WARNING, logger="skip_tuning"):
        assert comfy_nodes.SkipTuning.execute(base, 0.7, 1.0)[0] is base
    assert "no model wrappers, which HunyuanDiT needs" in caplog.text
