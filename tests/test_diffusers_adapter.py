"""The diffusers adapter on tiny real diffusers models: what each skip receives, measured by probes
(diffusers_helpers) that never read the adapter's internals."""

from __future__ import annotations

import math

import diffusers_helpers as h
import pytest
import torch

from skip_tuning import rho_schedule
from skip_tuning.diffusers import SkipTuningError, apply_residual_tuning, apply_skip_tuning

diffusers = h.diffusers


def expected_rho(n, bottom, top, i):
    return bottom if n == 1 else bottom + (top - bottom) * i / (n - 1)


def assert_scaled(call, rhos):
    """Every skip of one U-Net forward arrived as exactly skip * rho."""
    pairs = h.received_skips(call)
    assert len(pairs) == len(rhos)
    for i, ((pushed, received), rho) in enumerate(zip(pairs, rhos)):
        assert torch.equal(received, pushed * rho), f"skip {i}"


@pytest.fixture(scope="module")
def models():
    """Tiny models by kind, built once (tests that change a model build their own)."""
    cache = {}

    def get(kind):
        if kind not in cache:
            cache[kind] = h.BUILDERS[kind]()
        return cache[kind]

    return get


@pytest.mark.parametrize("kind", h.UNET_KINDS)
def test_each_unet_skip_is_scaled_by_its_rho(kind, models):
    """Up blocks called by keyword (most classes) and positionally (UNet2DModel) alike."""
    model = models(kind)
    n = h.SKIP_COUNTS[kind]
    bottom, top = 0.6, 1.15
    with h.unet_skip_probe(model) as calls:
        plain = h.run(model, kind)
        with apply_skip_tuning(model, bottom, top) as handle:
            tuned = h.run(model, kind)
        after = h.run(model, kind)
    assert handle.rhos == rho_schedule(n, bottom, top)
    assert handle.rhos == pytest.approx([expected_rho(n, bottom, top, i) for i in range(n)], abs=1e-12)
    assert_scaled(calls[0], [1.0] * n)  # the probe's numbering: skip k is residual N - 1 - k
    assert_scaled(calls[1], handle.rhos)
    assert not torch.equal(tuned, plain)
    assert torch.equal(after, plain)


def test_hunyuan_dit_skips_are_scaled_by_their_rho(models):
    model = models("hunyuan")
    n = h.SKIP_COUNTS["hunyuan"]
    with h.hunyuan_skip_probe(model) as calls:
        plain = h.run(model, "hunyuan")
        with apply_skip_tuning(model, 0.5, 1.3) as handle:
            tuned = h.run(model, "hunyuan")
    assert handle.rhos == rho_schedule(n, 0.5, 1.3)
    for index in range(n):
        pushed, received = calls[0]["pushed"][index], calls[0]["received"][index]
        assert torch.equal(received, pushed)
        pushed, received = calls[1]["pushed"][index], calls[1]["received"][index]
        assert torch.equal(received, pushed * handle.rhos[index]), f"skip {index}"
    assert not torch.equal(tuned, plain)


def test_rho_per_skip_overrides_the_interpolation(models):
    model = models("unet2d")
    factors = (0.5, 1.3, 0.9, 1.0, 0.7, 1.1)
    for given in (factors, list(factors), ", ".join(map(str, factors))):
        with h.unet_skip_probe(model) as calls, apply_skip_tuning(model, 0.8, rho_per_skip=given) as handle:
            h.run(model, "unet2d")
        assert handle.rhos == factors
        assert_scaled(calls[0], factors)


def test_rho_one_attaches_nothing_and_remove_restores_the_model_exactly():
    model = h.sd1_unet()
    state = h.module_state(model)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    plain = h.run(model, "sd1")

    neutral = apply_skip_tuning(model, 1.0, 1.0, start=0.2, end=0.8)
    assert not neutral.attached and h.module_state(model) == state
    assert torch.equal(h.run(model, "sd1"), plain)
    neutral.remove()

    handle = apply_skip_tuning(model, 0.7, start=0.0, end=0.9)
    assert handle.attached and h.module_state(model) != state
    tuned = h.run(model, "sd1")
    assert not torch.equal(tuned, plain)
    assert torch.equal(h.run(model, "sd1"), tuned), "no state carried between calls"
    handle.remove()
    handle.remove()  # idempotent
    assert h.module_state(model) == state, "no hook or attribute left"
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert torch.equal(h.run(model, "sd1"), plain)


def test_the_context_manager_removes_the_hooks_on_an_exception():
    model = h.unet_2d()
    state = h.module_state(model)
    with pytest.raises(RuntimeError, match="inside"), apply_skip_tuning(model, 0.7):
        raise RuntimeError("inside")
    assert h.module_state(model) == state


def test_two_handles_multiply(models):
    model = models("unet2d")
    with h.unet_skip_probe(model) as calls, apply_skip_tuning(model, 0.5, 1.0) as first:
        with apply_skip_tuning(model, 0.8, 0.8):
            h.run(model, "unet2d")
    for (pushed, received), rho in zip(h.received_skips(calls[0]), first.rhos):
        assert torch.equal(received, (pushed * rho) * 0.8)


def test_bfloat16_stays_bfloat16():
    model = h.unet_2d().to(torch.bfloat16)
    inputs = {k: v.to(torch.bfloat16) for k, v in h.unet_inputs("unet2d").items()}
    with h.unet_skip_probe(model) as calls:
        plain = h.run(model, "unet2d", **inputs)
        with apply_skip_tuning(model, 0.7, 1.0) as handle:
            tuned = h.run(model, "unet2d", **inputs)
        neutral = h.run(model, "unet2d", **inputs)
    assert tuned.dtype == torch.bfloat16
    for _, received in h.received_skips(calls[1]):
        assert received.dtype == torch.bfloat16
    assert_scaled(calls[1], handle.rhos)
    assert torch.equal(neutral, plain)


# ---------------------------------------------------------------------------------------------
# start / end


def window_expectation(timesteps, start, end, last=999):
    """ComfyUI's convention for a discrete model: fraction p is timestep (1 - p) * last."""
    high = math.inf if start <= 0 else (1 - start) * last
    low = -math.inf if end >= 1 else (1 - end) * last
    return [low <= float(t) <= high for t in timesteps]


def scaled_or_plain(call, rho):
    pairs = h.received_skips(call)
    if all(torch.equal(received, pushed) for pushed, received in pairs):
        return False
    for pushed, received in pairs:
        assert torch.equal(received, pushed * rho)
    return True


def test_the_window_on_a_real_scheduler_loop():
    """DDPMPipeline (which calls the U-Net positionally) with DDIM, 10 steps: on at timesteps 700-400 only."""
    unet = h.unet_2d()
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler(num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)
    seen = []
    record = unet.register_forward_pre_hook(lambda module, args: seen.append(float(args[1])))
    start, end, rho = 0.25, 0.65, 0.5
    try:
        with h.unet_skip_probe(unet) as calls, apply_skip_tuning(pipe, rho, rho, start=start, end=end):
            pipe(batch_size=1, num_inference_steps=10, output_type="np", generator=torch.Generator().manual_seed(0))
    finally:
        record.remove()
    assert seen == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    expected = window_expectation(seen, start, end)
    assert expected == [False, False, True, True, True, True, False, False, False, False]
    assert [scaled_or_plain(call, rho) for call in calls] == expected


def test_the_window_follows_the_scheduler_given_for_a_bare_model(models):
    model = models("unet2d")
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=500)
    with h.unet_skip_probe(model) as calls, apply_skip_tuning(model, 0.5, 0.5, start=0.5, scheduler=scheduler):
        for t in (300, 249, 250, 100):  # active at or below (1 - 0.5) * 499 = 249.5
            h.run(model, "unet2d", timestep=torch.tensor([t]))
    assert [scaled_or_plain(call, 0.5) for call in calls] == [False, True, False, True]


def test_a_python_number_timestep_and_a_missing_scheduler_use_1000_train_timesteps(models):
    model = models("sd1")
    with h.unet_skip_probe(model) as calls, apply_skip_tuning(model, 0.5, 0.5, end=0.5):
        for t in (500, 499, 0.0):  # active at or above (1 - 0.5) * 999 = 499.5
            h.run(model, "sd1", timestep=t)
    assert [scaled_or_plain(call, 0.5) for call in calls] == [True, False, False]


# ---------------------------------------------------------------------------------------------
# Bad input: a clear SkipTuningError and nothing attached


@pytest.mark.parametrize("kwargs, message", [
    ({"rho_bottom": float("nan")}, "rho_bottom must be finite"),
    ({"rho_top": float("inf")}, "rho_top must be finite"),
    ({"rho_bottom": -0.1}, "rho_bottom must be between 0.0 and 2.0"),
    ({"rho_top": "abc"}, "rho_top must be a number"),
    ({"start": 0.8, "end": 0.2}, r"start \(0.8\) must not be after end \(0.2\)"),
    ({"end": float("nan")}, "end must be between 0 and 1"),
    ({"rho_per_skip": [1.0] * 5}, "rho_per_skip has 5 values but this model has 12 long skips; give 12 values"),
    ({"rho_per_skip": "1, x"}, "rho_per_skip entry 2 must be a number"),
    ({"rho_per_skip": [1.0] * 11 + [float("nan")]}, "rho_per_skip entry 12 must be finite"),
    ({"rho_per_skip": 3}, "rho_per_skip must be a sequence of numbers"),
])
def test_bad_values_raise_and_attach_nothing(kwargs, message):
    model = h.sd1_unet()
    state = h.module_state(model)
    with pytest.raises(SkipTuningError, match=message):
        apply_skip_tuning(model, **kwargs)
    assert h.module_state(model) == state


def test_models_without_long_skips_are_named_in_the_error(models):
    flux = models("flux")
    state = h.module_state(flux)
    with pytest.raises(SkipTuningError, match="FluxTransformer2DModel has no long skip connections.*"
                                              "use apply_residual_tuning"):
        apply_skip_tuning(flux, 0.8)
    assert h.module_state(flux) == state
    with pytest.raises(SkipTuningError, match="UNet2DConditionModel is not a DiT Residual Tuning supports"):
        apply_residual_tuning(models("sd1"), 0.9, 1.0)
    with pytest.raises(SkipTuningError, match="object is neither a diffusers model nor a pipeline with a unet"):
        apply_skip_tuning(object(), 0.8)
    assert issubclass(SkipTuningError, ValueError)


# ---------------------------------------------------------------------------------------------
# Pipelines and composition


class _Wrapper:
    """What SD.Next sometimes holds instead of the pipeline: an object exposing it as ``.pipe``."""

    def __init__(self, pipe):
        self.pipe = pipe


def test_a_pipeline_and_a_wrapper_with_pipe_are_accepted():
    unet = h.unet_2d()
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)

    def sample():
        return pipe(batch_size=1, num_inference_steps=3, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images

    plain = sample()
    with apply_skip_tuning(pipe, 1.0):
        assert (sample() == plain).all(), "rho 1: bit-identical images"
    for target in (pipe, _Wrapper(pipe)):
        with apply_skip_tuning(target, 0.6) as handle:
            assert handle.model is unet
            tuned = sample()
        assert not (tuned == plain).all()
    assert (sample() == plain).all()


def test_controlnet_residuals_are_scaled_with_the_skips(models):
    """ControlNet's residuals are added to the down-path residuals before the up blocks take them."""
    model = models("sd1")
    generator = torch.Generator().manual_seed(5)
    with h.unet_skip_probe(model) as calls:
        h.run(model, "sd1")
    controls = tuple(torch.randn(r.shape, generator=generator) for r in calls[0]["residuals"])
    mid = torch.randn(1, 16, 2, 2, generator=generator)
    with h.unet_skip_probe(model) as calls, apply_skip_tuning(model, 0.6, 1.2) as handle:
        h.run(model, "sd1", down_block_additional_residuals=controls, mid_block_additional_residual=mid)
    n = len(controls)
    for k, ((pushed, received), rho) in enumerate(zip(h.received_skips(calls[0]), handle.rhos)):
        assert torch.equal(received, (pushed + controls[n - 1 - k]) * rho)


@pytest.mark.parametrize("order", ["freeu_first", "skip_tuning_first"])
def test_composes_with_diffusers_freeu(order):
    model = h.sd1_unet()
    freeu = {"s1": 0.9, "s2": 0.2, "b1": 1.2, "b2": 1.4}
    if order == "freeu_first":
        model.enable_freeu(**freeu)
        handle = apply_skip_tuning(model, 0.7, 1.0)
    else:
        handle = apply_skip_tuning(model, 0.7, 1.0)
        model.enable_freeu(**freeu)
    with h.unet_skip_probe(model) as calls:
        stacked = h.run(model, "sd1")
        handle.remove()
        freeu_only = h.run(model, "sd1")
    assert not torch.equal(stacked, freeu_only)
    # FreeU filters the skip after the up block takes it; its Fourier filter is linear, so the filtered
    # tuned skip is rho times the filtered plain one (up to FFT rounding).
    for (_, tuned), (_, plain), rho in zip(h.received_skips(calls[0]), h.received_skips(calls[1]), handle.rhos):
        torch.testing.assert_close(tuned, plain * rho, rtol=1e-5, atol=1e-6)
    other = h.sd1_unet()
    with apply_skip_tuning(other, 0.7, 1.0):
        other.enable_freeu(**freeu)
        assert torch.equal(h.run(other, "sd1"), stacked), "either order gives the same output"


@pytest.mark.parametrize("order", ["casting_first", "skip_tuning_first"])
def test_composes_with_layerwise_casting(order):
    model = h.sd1_unet()
    casting = {"storage_dtype": torch.float8_e4m3fn, "compute_dtype": torch.float32}
    if order == "casting_first":
        model.enable_layerwise_casting(**casting)
        handle = apply_skip_tuning(model, 0.7, 1.1)
    else:
        handle = apply_skip_tuning(model, 0.7, 1.1)
        model.enable_layerwise_casting(**casting)
    with h.unet_skip_probe(model) as calls:
        stacked = h.run(model, "sd1")
        handle.remove()
        casting_only = h.run(model, "sd1")
    assert_scaled(calls[0], handle.rhos)
    assert_scaled(calls[1], [1.0] * 12)
    assert not torch.equal(stacked, casting_only)
    other = h.sd1_unet()
    other.enable_layerwise_casting(**casting)
    with apply_skip_tuning(other, 0.7, 1.1):
        assert torch.equal(h.run(other, "sd1"), stacked), "either order gives the same output"


@pytest.mark.parametrize("order", ["offload_first", "skip_tuning_first"])
def test_composes_with_group_offloading(order):
    pytest.importorskip("accelerate", reason="diffusers' group offloading needs accelerate")
    reference = h.sd1_unet()
    with apply_skip_tuning(reference, 0.7, start=0.1, end=0.9):
        expected = h.run(reference, "sd1")
    model = h.sd1_unet()
    offload = {"onload_device": torch.device("cpu"), "offload_type": "block_level", "num_blocks_per_group": 1}
    if order == "offload_first":
        model.enable_group_offload(**offload)
        handle = apply_skip_tuning(model, 0.7, start=0.1, end=0.9)
    else:
        handle = apply_skip_tuning(model, 0.7, start=0.1, end=0.9)
        model.enable_group_offload(**offload)
    assert torch.equal(h.run(model, "sd1"), expected)
    handle.remove()
    assert torch.equal(h.run(model, "sd1"), h.run(reference, "sd1"))


@pytest.mark.parametrize("order", ["offload_first", "skip_tuning_first"])
def test_composes_with_model_cpu_offload(order):
    """accelerate's offload hooks replace the U-Net's forward; here they offload to the CPU itself."""
    pytest.importorskip("accelerate", reason="enable_model_cpu_offload needs accelerate")

    def pipeline():
        pipe = diffusers.DDPMPipeline(unet=h.unet_2d(), scheduler=diffusers.DDIMScheduler(num_train_timesteps=1000))
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def sample(pipe):
        return pipe(batch_size=1, num_inference_steps=3, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images

    reference = pipeline()
    plain = sample(reference)
    with apply_skip_tuning(reference, 0.7, start=0.2, end=0.9):
        expected = sample(reference)
    pipe = pipeline()
    if order == "offload_first":
        pipe.enable_model_cpu_offload(device="cpu")
        handle = apply_skip_tuning(pipe, 0.7, start=0.2, end=0.9)
    else:
        handle = apply_skip_tuning(pipe, 0.7, start=0.2, end=0.9)
        pipe.enable_model_cpu_offload(device="cpu")
    assert (sample(pipe) == expected).all()
    handle.remove()
    assert (sample(pipe) == plain).all()


def test_a_tiny_stable_diffusion_pipeline_end_to_end(comfyui_path):
    """SD1.x text-to-image with CFG, built offline: a tiny CLIP text model from a config and the SD1
    tokenizer files that ship with ComfyUI."""
    transformers = pytest.importorskip("transformers", reason="the text encoder needs transformers")
    tokenizer = transformers.CLIPTokenizer.from_pretrained(str(comfyui_path / "comfy" / "sd1_tokenizer"),
                                                           model_max_length=77)
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=h.CONTEXT_DIM, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=77)).eval()
    vae = diffusers.AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                                  up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=4)
    scheduler = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                        clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    unet = h.sd1_unet()
    pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                             scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def sample():
        return pipe("a photo of a cat", num_inference_steps=2, guidance_scale=4.0, height=16, width=16,
                    output_type="np", generator=torch.Generator().manual_seed(0)).images

    plain = sample()
    with h.unet_skip_probe(unet) as calls, apply_skip_tuning(pipe, 0.7, 1.0) as handle:
        tuned = sample()
    assert len(calls) == 2 and calls[0]["residuals"][0].shape[0] == 2, "one batched cond/uncond call per step"
    for call in calls:
        assert_scaled(call, handle.rhos)
    assert not (tuned == plain).all()
    assert (sample() == plain).all()
