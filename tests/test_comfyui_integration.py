"""Skip Tuning inside a real ComfyUI checkout, in process.

Tiny U-Nets built from ComfyUI's own classes (UNetModel in BaseModel, ModelPatcher) are
sampled through ``comfy.sample.sample`` (what KSampler runs). What each output block
receives is measured with probe patches registered before and after the node's patch,
never by reading the node's internals.
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
    """Tiny models by kind, built once per module (the tests clone them, never change them)."""
    cache = {}

    def get(kind, dtype=torch.float32):
        key = (kind, dtype)
        if key not in cache:
            cache[key] = ch.build_tiny_flux() if kind == "flux" else ch.build_tiny_unet(kind, dtype=dtype)
        return cache[key]

    return get


def expected_rho(n, bottom, top, i):
    return bottom if n == 1 else bottom + (top - bottom) * i / (n - 1)


def probed(base, apply):
    """base -> probe -> apply(...) -> probe; returns (model to sample, before records, after records)."""
    with_probe, before = ch.skip_probe(base)
    tuned = apply(with_probe)
    final, after = ch.skip_probe(tuned)
    return final, before, after


def pairs(before, after):
    assert len(before) == len(after) > 0
    for b, a in zip(before, after):
        assert b["block"] == a["block"] and b["sigma"] == a["sigma"]
        yield b, a


def measured_ratio(b, a):
    skip, scaled = b["hsp"].double(), a["hsp"].double()
    return float((skip * scaled).sum() / (skip * skip).sum())


def freeu(model):
    """ComfyUI's FreeU node, classic or V3 API."""
    from comfy_extras.nodes_freelunch import FreeU

    arguments = {"b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2}
    if hasattr(FreeU, "patch"):
        return FreeU().patch(model, **arguments)[0]
    result = FreeU.execute(model, **arguments)
    return result.result[0] if hasattr(result, "result") else result[0]


@pytest.mark.parametrize("kind", ["sd1", "sdxl", "koala", "sdxs"])
def test_each_skip_is_scaled_by_its_rho(kind, tiny, comfy_nodes):
    base = tiny(kind)
    n = ch.TINY_UNET_SKIPS[kind]
    assert len(base.get_model_object("diffusion_model").output_blocks) == n
    bottom, top = 0.6, 1.15
    model, before, after = probed(base, lambda m: comfy_nodes.SkipTuning.execute(m, bottom, top)[0])
    ch.sample(model, steps=STEPS)

    assert len(before) == STEPS * n  # one batched (cond + uncond) call per step
    ratios = {}
    for b, a in pairs(before, after):
        i = b["block"]
        rho = expected_rho(n, bottom, top, i)
        assert torch.equal(a["hsp"], b["hsp"] * rho), f"block {i}"
        assert torch.equal(a["h"], b["h"]), "the backbone features are not touched"
        assert abs(measured_ratio(b, a) - rho) < 1e-6
        ratios.setdefault(i, []).append(measured_ratio(b, a))
    if kind == "sdxs":
        assert before[0]["block"] == 0 and before[0]["h_is_hsp"], "no middle block: h is hsp at block 0"
        assert not after[0]["h_is_hsp"]
    ch.MEASURED_RHOS[f"{kind} (N={n}, rho_bottom={bottom}, rho_top={top})"] = [
        (i, expected_rho(n, bottom, top, i), min(values), max(values)) for i, values in sorted(ratios.items())
    ]


def test_rho_per_skip_overrides_the_interpolation(tiny, comfy_nodes):
    factors = (0.5, 1.3, 0.9, 1.0, 0.7, 1.1)
    text = ", ".join(str(rho) for rho in factors)
    model, before, after = probed(
        tiny("koala"), lambda m: comfy_nodes.SkipTuningAdvanced.execute(m, 0.8, 1.0, 0.0, 1.0, text, True)[0])
    ch.sample(model, steps=2)
    for b, a in pairs(before, after):
        assert torch.equal(a["hsp"], b["hsp"] * factors[b["block"]])


def test_rho_per_skip_with_the_wrong_count_names_the_models_skip_count(tiny, comfy_nodes):
    with pytest.raises(ValueError, match="this model has 9 long skips; give 9 values"):
        comfy_nodes.SkipTuningAdvanced.execute(tiny("sdxl"), 0.8, 1.0, 0.0, 1.0, "1, 1, 1, 1, 1, 1", True)


@pytest.mark.parametrize("kind", ["sd1", "sdxs"])
def test_rho_one_is_bit_identical_and_the_base_model_is_untouched(kind, tiny, comfy_nodes):
    base = tiny(kind)
    options_before = repr(base.model_options)
    wrappers_before = repr(getattr(base, "wrappers", None))
    weights_before = {k: v.clone() for k, v in base.model.diffusion_model.state_dict().items()}
    reference = ch.sample(base, steps=STEPS)

    neutral = comfy_nodes.SkipTuning.execute(base, 1.0, 1.0)[0]
    neutral_advanced = comfy_nodes.SkipTuningAdvanced.execute(base, 1.0, 1.0, 0.2, 0.8, "", False)[0]
    tuned = comfy_nodes.SkipTuning.execute(base, 0.7, 1.0)[0]
    assert neutral is not base and tuned is not base
    assert torch.equal(ch.sample(neutral, steps=STEPS), reference)
    assert torch.equal(ch.sample(neutral_advanced, steps=STEPS), reference)
    tuned_sample = ch.sample(tuned, steps=STEPS)
    assert not torch.equal(tuned_sample, reference)

    assert repr(base.model_options) == options_before
    assert repr(getattr(base, "wrappers", None)) == wrappers_before
    assert "output_block_patch" not in base.model_options["transformer_options"].get("patches", {})
    for key, value in base.model.diffusion_model.state_dict().items():
        assert torch.equal(value, weights_before[key]), key
    assert torch.equal(ch.sample(base, steps=STEPS), reference), "sampling the base model again is unchanged"
    assert torch.equal(ch.sample(tuned, steps=STEPS), tuned_sample), "no state carried between runs"


@pytest.mark.parametrize("order", ["freeu_first", "skip_tuning_first"])
def test_stacks_with_freeu_in_graph_order(order, tiny, comfy_nodes):
    base = tiny("sd1")
    rho_bottom = 0.7
    n = 12
    if order == "freeu_first":
        model, before, after = probed(freeu(base), lambda m: comfy_nodes.SkipTuning.execute(m, rho_bottom, 1.0)[0])
    else:
        model, before, after = probed(base, lambda m: comfy_nodes.SkipTuning.execute(m, rho_bottom, 1.0)[0])
        model = freeu(model)
    stacked = ch.sample(model, steps=STEPS)
    for b, a in pairs(before, after):
        assert torch.equal(a["hsp"], b["hsp"] * expected_rho(n, rho_bottom, 1.0, b["block"]))

    freeu_only = ch.sample(freeu(base), steps=STEPS)
    tuning_only = ch.sample(comfy_nodes.SkipTuning.execute(base, rho_bottom, 1.0)[0], steps=STEPS)
    assert not torch.equal(stacked, freeu_only) and not torch.equal(stacked, tuning_only)
    # FreeU's skip filter is linear, so both orders give the same image up to rounding.
    other_order = (comfy_nodes.SkipTuning.execute(freeu(base), rho_bottom, 1.0)[0] if order == "skip_tuning_first"
                   else freeu(comfy_nodes.SkipTuning.execute(base, rho_bottom, 1.0)[0]))
    torch.testing.assert_close(stacked, ch.sample(other_order, steps=STEPS), rtol=1e-3, atol=1e-3)


def test_two_skip_tuning_nodes_multiply(tiny, comfy_nodes):
    model, before, after = probed(
        tiny("koala"),
        lambda m: comfy_nodes.SkipTuning.execute(comfy_nodes.SkipTuning.execute(m, 0.5, 1.0)[0], 0.8, 0.8)[0])
    ch.sample(model, steps=2)
    for b, a in pairs(before, after):
        rho = expected_rho(6, 0.5, 1.0, b["block"])
        assert torch.equal(a["hsp"], (b["hsp"] * rho) * 0.8)


def test_sampling_window_switches_at_the_expected_steps(tiny, comfy_nodes):
    base = tiny("koala")
    steps, start, end, rho = 8, 0.3, 0.7, 0.5
    sampling = base.get_model_object("model_sampling")
    import comfy.samplers

    sigmas = comfy.samplers.calculate_sigmas(sampling, "simple", steps)[:-1].tolist()
    sigma_high, sigma_low = sampling.percent_to_sigma(start), sampling.percent_to_sigma(end)
    expected_on = [sigma_low <= sigma <= sigma_high for sigma in sigmas]
    assert any(expected_on) and not all(expected_on), expected_on

    model, before, after = probed(
        base, lambda m: comfy_nodes.SkipTuningAdvanced.execute(m, rho, rho, start, end, "", True)[0])
    ch.sample(model, steps=steps, scheduler="simple")
    seen = {}
    for b, a in pairs(before, after):
        on = not torch.equal(a["hsp"], b["hsp"])
        assert torch.equal(a["hsp"], b["hsp"] * rho if on else b["hsp"])
        seen.setdefault(b["sigma"], set()).add(on)
    assert list(seen) == pytest.approx(sigmas)
    observed_on = [seen[sigma] for sigma in seen]
    assert observed_on == [{flag} for flag in expected_on]
    ch.MEASURED_WINDOWS[f"koala, {steps} steps, window {start}-{end}"] = [
        (k, round(sigma, 4), flag) for k, (sigma, flag) in enumerate(zip(sigmas, expected_on))]

    # The whole run: no gate, every step tuned.
    model, before, after = probed(
        base, lambda m: comfy_nodes.SkipTuningAdvanced.execute(m, rho, rho, 0.0, 1.0, "", True)[0])
    ch.sample(model, steps=steps)
    assert all(torch.equal(a["hsp"], b["hsp"] * rho) for b, a in pairs(before, after))


def test_bf16_model_keeps_its_dtype(tiny, comfy_nodes):
    base = tiny("sd1", torch.bfloat16)
    assert base.model.get_dtype() == torch.bfloat16
    n = 12
    model, before, after = probed(
        base, lambda m: comfy_nodes.SkipTuningAdvanced.execute(m, 0.7, 1.0, 0.0, 0.6, "", True)[0])
    out = ch.sample(model, steps=STEPS)
    assert out.isfinite().all()
    sampling = base.get_model_object("model_sampling")
    sigma_low = sampling.percent_to_sigma(0.6)
    active_seen = inactive_seen = False
    for b, a in pairs(before, after):
        assert b["hsp"].dtype == a["hsp"].dtype == torch.bfloat16
        rho = expected_rho(n, 0.7, 1.0, b["block"])
        if b["sigma"] >= sigma_low:
            active_seen = True
            assert torch.equal(a["hsp"], b["hsp"] * rho)
        else:
            inactive_seen = True
            assert torch.equal(a["hsp"], b["hsp"])
    assert active_seen and inactive_seen
    assert torch.equal(ch.sample(comfy_nodes.SkipTuning.execute(base, 1.0, 1.0)[0], steps=2), ch.sample(base, steps=2))


def test_model_without_long_skips_passes_through(tiny, caplog, comfy_nodes):
    import comfy.supported_models

    if not hasattr(comfy.supported_models, "Flux"):
        pytest.skip("this ComfyUI predates Flux (2024-08)")
    base = tiny("flux")
    with caplog.at_level(logging.WARNING, logger="skip_tuning"):
        result = comfy_nodes.SkipTuning.execute(base, 0.7, 1.0)[0]
        advanced = comfy_nodes.SkipTuningAdvanced.execute(base, 0.7, 1.0, 0.2, 0.8, "0.5, 1", False)[0]
    assert result is base and advanced is base
    messages = [record.getMessage() for record in caplog.records if "Skip Tuning" in record.getMessage()]
    assert len(messages) == 2 and all("Flux" in message and "unchanged" in message for message in messages)
    out = ch.sample(result, steps=2, channels=16)
    assert out.shape == (1, 16, 8, 8) and out.isfinite().all()
    with pytest.raises(ValueError, match="rho_bottom must be finite"):
        comfy_nodes.SkipTuning.execute(base, float("nan"), 1.0)


# --- ControlNet ----------------------------------------------------------------------------------------------


def residual_control(skip_shapes, seed=5):
    """A ControlNet stand-in: adds a fixed residual to every skip, through ComfyUI's control path."""
    from comfy.controlnet import ControlBase

    generator = torch.Generator().manual_seed(seed)
    n = len(skip_shapes)
    # ComfyUI pops control["output"] from the end: output block i receives entry n - 1 - i.
    per_entry = [0.5 * torch.randn((1, *skip_shapes[n - 1 - j][1:]), generator=generator) for j in range(n)]

    class ResidualControl(ControlBase):
        def get_control(self, x_noisy, t, cond, batched_number, transformer_options=None):
            output = [r.to(x_noisy.dtype).expand(x_noisy.shape[0], *r.shape[1:]).clone() for r in per_entry]
            return {"input": [], "middle": [], "output": output}

        def copy(self):
            return self

    return ResidualControl(), per_entry


def test_controlnet_residual_scaled_or_kept(tiny, nodes, monkeypatch, caplog, comfy_nodes):
    base = tiny("koala")
    n, rho = 6, 0.5
    probe_model, records = ch.skip_probe(base)
    ch.sample(probe_model, steps=1)
    skip_shapes = [tuple(r["hsp"].shape) for r in records[:n]]
    control, per_entry = residual_control(skip_shapes)
    residual_of_block = [per_entry[n - 1 - i] for i in range(n)]

    def conds():
        return ch.tiny_conditioning(1, {"control": control}), ch.tiny_conditioning(2, {"control": control})

    # The residual really reaches the skips: at the first call the skips differ by exactly the residual.
    plain_model, plain = ch.skip_probe(base)
    ch.sample(plain_model, steps=1)
    controlled_model, controlled = ch.skip_probe(base)
    ch.sample(controlled_model, *conds(), steps=1)
    for p, c in zip(plain[:n], controlled[:n]):
        torch.testing.assert_close(c["hsp"] - p["hsp"], residual_of_block[p["block"]].expand_as(p["hsp"]))

    # scale_controlnet on: skip + residual scaled together.
    model, before, after = probed(
        base, lambda m: comfy_nodes.SkipTuningAdvanced.execute(m, rho, rho, 0, 1, "", True)[0])
    ch.sample(model, *conds(), steps=STEPS)
    for b, a in pairs(before, after):
        assert torch.equal(a["hsp"], b["hsp"] * rho)

    if nodes.model_wrapper_type(base, "DIFFUSION_MODEL") is not None:
        # scale_controlnet off: rho * skip + residual.
        model, before, after = probed(
            base, lambda m: comfy_nodes.SkipTuningAdvanced.execute(m, rho, rho, 0, 1, "", False)[0])
        ch.sample(model, *conds(), steps=STEPS)
        for b, a in pairs(before, after):
            residual = residual_of_block[b["block"]].expand_as(b["hsp"])
            torch.testing.assert_close(a["hsp"], rho * (b["hsp"] - residual) + residual, rtol=1e-5, atol=1e-5)
            assert not torch.allclose(a["hsp"], b["hsp"] * rho, rtol=1e-3, atol=1e-3)
        # Simulate a ComfyUI from before model wrappers (2024-12) for the fallback below.
        monkeypatch.setattr(nodes, "model_wrapper_type", lambda model, name: None)

    # A ComfyUI without model wrappers: warn, and scale the residual with the skip.
    with caplog.at_level(logging.WARNING, logger="skip_tuning"):
        model, before, after = probed(
            base, lambda m: comfy_nodes.SkipTuningAdvanced.execute(m, rho, rho, 0, 1, "", False)[0])
    assert any("scale_controlnet=false is not available" in r.getMessage() for r in caplog.records)
    ch.sample(model, *conds(), steps=2)
    for b, a in pairs(before, after):
        assert torch.equal(a["hsp"], b["hsp"] * rho)
