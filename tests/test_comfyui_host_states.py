"""Skip Tuning in the host states that break model patches, in the real ComfyUI, in process.

How ComfyUI calls the model (cond and uncond apart or together, in either order, batches, Heun's two calls
per step, CFG 1), how it stores weights (fp8 with a compute dtype, partial loading), and what other nodes
do to a tuned model (FreeU, Deep Shrink, LoRA, model merging, a ModelSampling node, EasyCache, two sampler
branches). Every skip is measured with probe patches registered around the node's patch (or hooks on the
U-ViT's blocks), never read from the node's internals. docs/comfyui-host-states.md says what each test shows.
"""

from __future__ import annotations

import comfy_helpers as ch
import pytest
import torch

pytestmark = pytest.mark.comfyui

N_SKIPS = ch.TINY_UNET_SKIPS["sd1"]


@pytest.fixture(scope="module")
def nodes(skip_tuning_pack):
    return skip_tuning_pack.skip_tuning.comfyui.adapter


@pytest.fixture(scope="module")
def base(comfy):
    return ch.build_tiny_unet("sd1")


def expected_rho(bottom, top, i, n=N_SKIPS):
    return bottom + (top - bottom) * i / (n - 1) if i < n - 1 else top


def run_node(node_class, method, **inputs):
    """A ComfyUI node's first output, whether this ComfyUI has it as a V1 class or a V3 ``execute``."""
    if hasattr(node_class, "execute") and not hasattr(node_class, method):
        result = node_class.execute(**inputs)
    else:
        result = getattr(node_class(), method)(**inputs)
    return result.result[0] if hasattr(result, "result") else result[0]


def probe(model):
    """Clone ``model`` and append an output-block patch that records what each block passes on, with the
    call's ``cond_or_uncond``. A plain closure: ModelPatcher.clone() deep-copies callable objects."""
    records = []

    def record(h, hsp, transformer_options):
        sigmas = transformer_options.get("sigmas")
        records.append({
            "block": transformer_options["block"][1],
            "sigma": float(sigmas.reshape(-1)[0]),
            "cond_or_uncond": list(transformer_options.get("cond_or_uncond", ())),
            "h": h.detach().clone(),
            "hsp": hsp.detach().clone(),
        })
        return h, hsp

    clone = model.clone()
    clone.set_model_output_block_patch(record)
    return clone, records


def probed(model, apply):
    """model -> probe -> apply(...) -> probe: (model to sample, records before, records after)."""
    with_probe, before = probe(model)
    final, after = probe(apply(with_probe))
    return final, before, after


def pairs(before, after):
    assert len(before) == len(after) > 0
    for b, a in zip(before, after):
        assert (b["block"], b["sigma"], b["cond_or_uncond"]) == (a["block"], a["sigma"], a["cond_or_uncond"])
        yield b, a


def calls(records, n=N_SKIPS):
    """The records grouped by model call (each U-Net forward passes blocks 0..n-1 in order)."""
    assert len(records) % n == 0
    grouped = [records[k:k + n] for k in range(0, len(records), n)]
    assert all([r["block"] for r in call] == list(range(n)) for call in grouped)
    return grouped


def assert_exact_factors(before, after, rho_of_block, active=lambda sigma: True):
    for b, a in pairs(before, after):
        expected = b["hsp"] * rho_of_block(b["block"]) if active(b["sigma"]) else b["hsp"]
        assert a["hsp"].dtype == b["hsp"].dtype
        assert torch.equal(a["hsp"], expected), (b["block"], b["sigma"], b["cond_or_uncond"])
        assert torch.equal(a["h"], b["h"])


def sample(model, batch=1, size=8, **kwargs):
    """comfy.sample.sample (what KSampler does) on a latent batch of ``batch``."""
    import comfy.sample

    kwargs.setdefault("positive", ch.tiny_conditioning(1))
    kwargs.setdefault("negative", ch.tiny_conditioning(2))
    seed = kwargs.pop("seed", 0)
    latent = torch.zeros(batch, ch.LATENT_CHANNELS, size, size)
    noise = comfy.sample.prepare_noise(latent, seed)
    with torch.inference_mode():
        return comfy.sample.sample(model, noise, kwargs.pop("steps", 4), kwargs.pop("cfg", 3.0),
                                   kwargs.pop("sampler", "euler"), kwargs.pop("scheduler", "simple"),
                                   kwargs.pop("positive"), kwargs.pop("negative"), latent, seed=seed,
                                   disable_pbar=True, **kwargs)


def schedule(model, steps, scheduler="simple"):
    import comfy.samplers

    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps).tolist()


def window_levels(model, start, end):
    sampling = model.get_model_object("model_sampling")
    return float(sampling.percent_to_sigma(end)), float(sampling.percent_to_sigma(start))


# --- How ComfyUI calls the model --------------------------------------------------------------------------


def test_cond_and_uncond_in_separate_calls(base, nodes, monkeypatch):
    # What ComfyUI does when the batched call would not fit in memory (low VRAM): one call each.
    model, before, after = probed(base, lambda m: nodes.apply_skip_tuning(m, 0.6, 1.1))
    monkeypatch.setattr(base.model, "memory_required", lambda *args, **kwargs: 1e30)
    sample(model, steps=3)
    per_call = [call[0]["cond_or_uncond"] for call in calls(after)]
    assert sorted(map(tuple, per_call)) == [(0,)] * 3 + [(1,)] * 3, per_call
    assert all(r["hsp"].shape[0] == 1 for r in after)
    assert_exact_factors(before, after, lambda i: expected_rho(0.6, 1.1, i))


def test_batched_calls_in_any_order_and_latent_batches(base, nodes):
    model, before, after = probed(base, lambda m: nodes.apply_skip_tuning(m, 0.6, 1.1))
    sample(model, batch=3, steps=3)
    orders = {tuple(call[0]["cond_or_uncond"]) for call in calls(after)}
    assert orders and all(sorted(order) == [0, 1] for order in orders), orders
    assert all(r["hsp"].shape[0] == 6 for r in after), "3 latents, cond and uncond, in one call"
    assert_exact_factors(before, after, lambda i: expected_rho(0.6, 1.1, i))


def test_heun_two_calls_per_step_each_judged_by_its_own_noise_level(base, nodes):
    steps, start, end = 5, 0.2, 0.8
    model, before, after = probed(base, lambda m: nodes.apply_skip_tuning(m, 0.5, 1.0, start, end))
    sample(model, steps=steps, sampler="heun")
    low, high = window_levels(base, start, end)
    sigmas = [call[0]["sigma"] for call in calls(after)]
    assert len(sigmas) == 2 * steps - 1, "a corrector call at the next level, except after the last step"
    assert any(low <= s <= high for s in sigmas) and not all(low <= s <= high for s in sigmas)
    assert_exact_factors(before, after, lambda i: expected_rho(0.5, 1.0, i), lambda s: low <= s <= high)


def test_cfg_one_runs_cond_only(base, nodes):
    model, before, after = probed(base, lambda m: nodes.apply_skip_tuning(m, 0.6, 1.1))
    sample(model, steps=3, cfg=1.0)
    assert [call[0]["cond_or_uncond"] for call in calls(after)] == [[0]] * 3
    assert_exact_factors(before, after, lambda i: expected_rho(0.6, 1.1, i))


# --- How ComfyUI stores the weights -----------------------------------------------------------------------


def build_fp8_unet(compute_dtype):
    """The tiny U-Net as UNETLoader's weight_dtype fp8_e4m3fn loads a model: fp8 weights, cast per layer."""
    import comfy.model_base
    import comfy.supported_models_base

    class TinyUNet(comfy.supported_models_base.BASE):
        unet_extra_config = {}
        supported_inference_dtypes = [torch.bfloat16, torch.float32]

    config = TinyUNet(ch.tiny_unet_config("sd1", torch.float8_e4m3fn))
    config.set_inference_dtype(torch.float8_e4m3fn, compute_dtype)
    model = comfy.model_base.BaseModel(config, model_type=comfy.model_base.ModelType.EPS)
    ch._seeded_init(model.diffusion_model, 0)
    model.eval()
    return ch._patcher(model)


def compute_dtypes_for_fp8():
    """bf16, and what ComfyUI itself picks for fp8 weights on this device (UNETLoader's path)."""
    import comfy.model_management

    device = comfy.model_management.get_torch_device()
    chosen = comfy.model_management.unet_manual_cast(torch.float8_e4m3fn, device, [torch.bfloat16, torch.float32])
    return sorted({torch.bfloat16, chosen}, key=str)


def test_fp8_weights_keep_the_skips_in_the_compute_dtype(comfy, nodes):
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("this torch has no float8_e4m3fn")
    for compute_dtype in compute_dtypes_for_fp8():
        fp8 = build_fp8_unet(compute_dtype)
        weights = fp8.model.diffusion_model.output_blocks[0][0].in_layers[2].weight
        assert weights.dtype == torch.float8_e4m3fn
        model, before, after = probed(fp8, lambda m: nodes.apply_skip_tuning(m, 0.6, 1.1))
        out = sample(model, steps=2)
        assert out.isfinite().all()
        assert {r["hsp"].dtype for r in before + after} == {compute_dtype}, compute_dtype
        assert_exact_factors(before, after, lambda i: expected_rho(0.6, 1.1, i))
        assert weights.dtype == torch.float8_e4m3fn


def test_partial_loading_casts_every_layer_and_keeps_the_factors(base, nodes, monkeypatch):
    """ComfyUI loads a model partly (lowvram: layers cast to the device as they run) when it does not fit;
    on a CPU it never does, so the load is forced the way a GPU without room would."""
    import comfy.model_management as mm

    tuned = nodes.apply_skip_tuning(base, 0.7, 1.0)
    reference = sample(tuned, steps=3)
    real_load = mm.load_models_gpu

    def load_without_room(*args, **kwargs):
        with monkeypatch.context() as patch:
            patch.setattr(mm, "vram_state", mm.VRAMState.NO_VRAM)
            patch.setattr(mm, "is_device_cpu", lambda device: False)
            return real_load(*args, **kwargs)

    cast_layers = []

    def count_cast_layers(h, hsp, transformer_options):
        if transformer_options["block"][1] == 0:
            cast_layers.append(sum(bool(getattr(m, "comfy_cast_weights", False))
                                   for m in base.model.diffusion_model.modules()))
        return h, hsp

    model, before, after = probed(base, lambda m: nodes.apply_skip_tuning(m, 0.7, 1.0))
    model.set_model_output_block_patch(count_cast_layers)
    mm.unload_all_models()
    monkeypatch.setattr(mm, "load_models_gpu", load_without_room)
    try:
        out = sample(model, steps=3)
    finally:
        monkeypatch.setattr(mm, "load_models_gpu", real_load)
        mm.unload_all_models()
    assert cast_layers and min(cast_layers) > 100, "every layer cast as it runs"
    assert_exact_factors(before, after, lambda i: expected_rho(0.7, 1.0, i))
    assert torch.equal(out, reference)


def test_dynamic_vram_is_not_used_on_a_cpu(comfy):
    import comfy.model_patcher

    dynamic = getattr(comfy.model_patcher, "ModelPatcherDynamic", None)
    if dynamic is None:
        pytest.skip("this ComfyUI has no dynamic VRAM (ModelPatcherDynamic, 2026)")
    network = ch.build_tiny_unet("koala").model
    patcher = dynamic(network, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    assert type(patcher) is comfy.model_patcher.ModelPatcher, "ComfyUI reroutes CPU models to the classic patcher"


# --- What other nodes do to a tuned model -----------------------------------------------------------------


def freeu_v2(model):
    from comfy_extras.nodes_freelunch import FreeU_V2

    return run_node(FreeU_V2, "patch", model=model, b1=1.3, b2=1.4, s1=0.9, s2=0.2)


def deep_shrink(model):
    from comfy_extras.nodes_model_downscale import PatchModelAddDownscale

    return run_node(PatchModelAddDownscale, "patch", model=model, block_number=3, downscale_factor=2.0,
                    start_percent=0.0, end_percent=0.5, downscale_after_skip=True,
                    downscale_method="bicubic", upscale_method="bicubic")


@pytest.mark.parametrize("order", ["other_first", "skip_tuning_first"])
@pytest.mark.parametrize("other", ["freeu_v2", "deep_shrink"])
def test_freeu_v2_and_deep_shrink_before_and_after(order, other, base, nodes):
    other_node = {"freeu_v2": freeu_v2, "deep_shrink": deep_shrink}[other]

    def tune(model):
        return nodes.apply_skip_tuning(model, 0.7, 1.0)

    size = 16  # FreeU_V2 normalises by the spread of each feature map: a 1x1 map has none
    if order == "other_first":
        model, before, after = probed(other_node(base), tune)
    else:
        model, before, after = probed(base, tune)
        model = other_node(model)
    stacked = sample(model, size=size)
    assert stacked.isfinite().all()
    assert_exact_factors(before, after, lambda i: expected_rho(0.7, 1.0, i))
    other_order = tune(other_node(base)) if order == "skip_tuning_first" else other_node(tune(base))
    reversed_stack = sample(other_order, size=size)
    if other == "deep_shrink":
        # Deep Shrink resizes h (before the skips are taken, and back at the output blocks); the skips are
        # scaled at whatever size they have, and neither patch reads what the other changes.
        sizes = {r["hsp"].shape[-1] for r in after if r["block"] == 7}  # the skip of input block 4
        assert len(sizes) == 2, f"the skip's size changes where Deep Shrink is active: {sizes}"
        assert torch.equal(stacked, reversed_stack)
    else:
        # FreeU_V2's skip filter is linear, so it commutes with a factor: the same image up to rounding.
        torch.testing.assert_close(stacked, reversed_stack, rtol=1e-4, atol=1e-4 * float(stacked.abs().max()))
    assert not torch.equal(stacked, sample(other_node(base), size=size))


def tiny_lora(network, rank=2, seed=3):
    """A LoRA in the generic ``<weight path>.lora_up/.lora_down`` layout for two of the U-Net's layers."""
    generator = torch.Generator().manual_seed(seed)
    lora = {}
    for path in ("time_embed.0", "output_blocks.5.1.proj_out"):
        weight = network.get_submodule(path).weight
        out_features, in_features = weight.shape[0], weight[0].numel()
        key = f"diffusion_model.{path}"
        lora[f"{key}.lora_up.weight"] = torch.randn(out_features, rank, generator=generator)
        lora[f"{key}.lora_down.weight"] = 0.3 * torch.randn(rank, in_features, generator=generator).reshape(
            rank, *weight.shape[1:])
    return lora


def test_lora_applied_after_skip_tuning_keeps_the_patch(base, nodes):
    import comfy.sd

    weights_before = {k: v.clone() for k, v in base.model.diffusion_model.state_dict().items()}
    lora = tiny_lora(base.model.diffusion_model)
    model, before, after = probed(base, lambda m: nodes.apply_skip_tuning(m, 0.6, 1.0))
    with_lora, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)
    assert len(with_lora.patches) == 2, "both LoRA layers were matched"
    out = sample(with_lora)
    assert_exact_factors(before, after, lambda i: expected_rho(0.6, 1.0, i))
    lora_only, _ = comfy.sd.load_lora_for_models(base, None, lora, 1.0, 0.0)
    tuned_only = nodes.apply_skip_tuning(base, 0.6, 1.0)
    assert not torch.equal(out, sample(lora_only)) and not torch.equal(out, sample(tuned_only))
    for key, value in base.model.diffusion_model.state_dict().items():
        assert torch.equal(value, weights_before[key]), f"the LoRA is unpatched after sampling: {key}"


def merge_simple(model1, model2, ratio=0.5):
    from comfy_extras.nodes_model_merging import ModelMergeSimple

    return run_node(ModelMergeSimple, "merge", model1=model1, model2=model2, ratio=ratio)


def test_model_merge_simple_keeps_the_first_models_patches_only(base, nodes):
    other = ch.build_tiny_unet("sd1", seed=1)
    model, before, after = probed(base, lambda m: nodes.apply_skip_tuning(m, 0.6, 1.0))
    sample(merge_simple(model, other))
    assert_exact_factors(before, after, lambda i: expected_rho(0.6, 1.0, i))
    # In the second slot the tuned model gives only its weights: ComfyUI drops its patches.
    dropped = merge_simple(other, nodes.apply_skip_tuning(base, 0.6, 1.0))
    assert "output_block_patch" not in dropped.model_options["transformer_options"].get("patches", {})
    assert torch.equal(sample(dropped), sample(merge_simple(other, base)))


def model_sampling_edm(model, sigma_max=120.0, sigma_min=0.002):
    """ComfyUI's ModelSamplingContinuousEDM: other noise levels for the same percents of sampling."""
    from comfy_extras.nodes_model_advanced import ModelSamplingContinuousEDM

    return run_node(ModelSamplingContinuousEDM, "patch", model=model, sampling="eps", sigma_max=sigma_max,
                    sigma_min=sigma_min)


def test_window_follows_a_model_sampling_node_placed_after_it(base, nodes):
    steps, start, end = 8, 0.3, 0.7
    model, before, after = probed(base, lambda m: nodes.apply_skip_tuning(m, 0.5, 1.0, start, end))
    model = model_sampling_edm(model)
    low, high = window_levels(model, start, end)
    sigmas = schedule(model, steps)[:-1]
    node_time_low, node_time_high = window_levels(base, start, end)
    on = [low <= s <= high for s in sigmas]
    assert on != [node_time_low <= s <= node_time_high for s in sigmas], "the test needs levels that differ"
    sample(model, steps=steps)
    assert_exact_factors(before, after, lambda i: expected_rho(0.5, 1.0, i), lambda s: low <= s <= high)
    seen = [not torch.equal(a["hsp"], b["hsp"]) for b, a in pairs(before, after) if b["block"] == 0]
    assert seen == on  # one batched call per step


def test_uvit_window_follows_a_model_sampling_node_placed_after_it(comfy, nodes):
    steps, start, end = 8, 0.3, 0.7
    uvit = ch.build_tiny_hunyuan_dit()
    model = model_sampling_edm(nodes.apply_skip_tuning(uvit, 0.5, 0.5, start, end))
    low, high = window_levels(model, start, end)
    sigmas = schedule(model, steps)[:-1]
    on = [low <= s <= high for s in sigmas]
    node_time_low, node_time_high = window_levels(uvit, start, end)
    assert on != [node_time_low <= s <= node_time_high for s in sigmas]
    with ch.uvit_skip_probe(model) as forward_calls:
        ch.sample(model, positive=ch.hunyuan_dit_conditioning(1), negative=ch.hunyuan_dit_conditioning(2),
                  steps=steps)
    assert len(forward_calls) == steps
    for call, active in zip(forward_calls, on):
        for pushed, received in call.values():
            assert torch.equal(received, pushed * 0.5 if active else pushed)


def easycache(model, reuse_threshold=1.0):
    from comfy_extras.nodes_easycache import EasyCacheNode

    return run_node(EasyCacheNode, "execute", model=model, reuse_threshold=reuse_threshold, start_percent=0.0,
                    end_percent=1.0, verbose=False)


def test_easycache_on_a_unet(base, nodes):
    pytest.importorskip("comfy_extras.nodes_easycache")
    steps = 10
    model, before, after = probed(base, lambda m: nodes.apply_skip_tuning(m, 0.6, 1.0))
    cached = easycache(model)
    out = sample(cached, steps=steps)
    forwards = calls(after)
    assert 0 < len(forwards) < steps, f"EasyCache skipped U-Net calls: {len(forwards)} of {steps} ran"
    assert_exact_factors(before, after, lambda i: expected_rho(0.6, 1.0, i))
    assert not torch.equal(out, sample(easycache(base), steps=steps))


def test_easycache_on_a_uvit_leaves_the_tuning_whole(comfy, nodes):
    """HunyuanDiT's forward runs no diffusion-model wrapper, so EasyCache (one) never skips a call on it."""
    pytest.importorskip("comfy_extras.nodes_easycache")
    steps = 6
    uvit = ch.build_tiny_hunyuan_dit()
    model = easycache(nodes.apply_skip_tuning(uvit, 0.5, 0.5))
    with ch.uvit_skip_probe(model) as forward_calls:
        ch.sample(model, positive=ch.hunyuan_dit_conditioning(1), negative=ch.hunyuan_dit_conditioning(2),
                  steps=steps)
    assert len(forward_calls) == steps
    for call in forward_calls:
        assert len(call) == ch.TINY_UVIT_SKIPS["hunyuan_dit"]
        for pushed, received in call.values():
            assert torch.equal(received, pushed * 0.5)


def test_two_sampler_branches_from_one_tuned_model(base, nodes):
    options_before, wrappers_before = repr(base.model_options), repr(base.wrappers)
    steps, start, end = 8, 0.3, 0.7
    tuned, before, after = probed(base, lambda m: nodes.apply_skip_tuning(m, 0.5, 1.0, start, end))
    tuned_options = repr(tuned.model_options)
    stacked, _, stacked_after = probed(tuned, lambda m: nodes.apply_skip_tuning(m, 0.8, 0.8))
    resampled = model_sampling_edm(tuned)

    first = sample(tuned, steps=steps)
    n_first = len(after)
    sample(stacked, steps=steps)
    sample(resampled, steps=steps)
    again = sample(tuned, steps=steps)

    assert torch.equal(first, again), "no state carried from one branch to another"
    low, high = window_levels(base, start, end)
    first_run = list(zip(before[:n_first], after[:n_first]))
    assert_exact_factors([b for b, _ in first_run], [a for _, a in first_run],
                         lambda i: expected_rho(0.5, 1.0, i), lambda s: low <= s <= high)
    # The stacked branch: this node's factors, then the second node's 0.8.
    for b, a in zip(before[n_first:2 * n_first], stacked_after):
        rho = expected_rho(0.5, 1.0, b["block"]) if low <= b["sigma"] <= high else 1.0
        assert torch.equal(a["hsp"], b["hsp"] * rho * 0.8 if rho != 1.0 else b["hsp"] * 0.8)
    # The resampled branch judges the window on its own levels.
    low_r, high_r = window_levels(resampled, start, end)
    third = slice(2 * n_first, 3 * n_first)
    assert_exact_factors(before[third], after[third], lambda i: expected_rho(0.5, 1.0, i),
                         lambda s: low_r <= s <= high_r)
    assert repr(tuned.model_options) == tuned_options
    assert repr(base.model_options) == options_before and repr(base.wrappers) == wrappers_before
