"""Residual Tuning on tiny diffusers Flux and SD3 transformers: the factor per block (the ComfyUI node's
``block_factors``) and the identity path each block scales, checked against the block run without hooks."""

from __future__ import annotations

import contextlib
import math

import diffusers_helpers as h
import pytest
import torch

from skip_tuning import block_factors
from skip_tuning.diffusers import SkipTuningError, apply_residual_tuning

diffusers = h.diffusers


def residual_blocks(model):
    if isinstance(model, diffusers.FluxTransformer2DModel):
        return [(block, "double") for block in model.transformer_blocks] + [
            (block, "single") for block in model.single_transformer_blocks]
    return [(block, "joint") for block in model.transformer_blocks]


@contextlib.contextmanager
def block_probe(model):
    """Per block call, in order: (block index, kind, args, kwargs, output as the model continues with it).
    Registered after the adapter's hooks, so it sees their result."""
    records = []
    handles = []

    def hook(index, kind):
        def record(module, args, kwargs, output):
            records.append((index, kind, args, dict(kwargs), output))
        return record

    try:
        for index, (block, kind) in enumerate(residual_blocks(model)):
            handles.append(block.register_forward_hook(hook(index, kind), with_kwargs=True))
        yield records
    finally:
        for handle in handles:
            handle.remove()


def raw_output(model, index, args, kwargs):
    """The block's own forward on the same inputs, without any hook."""
    block = residual_blocks(model)[index][0]
    with torch.no_grad():
        return type(block).forward(block, *args, **kwargs)


@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_each_block_computes_rho_x_plus_f_x(kind):
    model = h.BUILDERS[kind]()
    n_blocks = len(residual_blocks(model))
    rho_first, rho_last, start_depth = 0.9, 1.05, 0.4
    plain = h.run(model, kind)
    handle = apply_residual_tuning(model, rho_first, rho_last, start_depth=start_depth)
    with block_probe(model) as records:
        tuned = h.run(model, kind)
    handle.remove()
    assert handle.rhos == block_factors(n_blocks, rho_first, rho_last, start_depth)
    assert handle.rhos[0] == 1.0 and handle.rhos[-1] == rho_last
    assert [record[0] for record in records] == list(range(n_blocks))
    for index, block_kind, args, kwargs, output in records:
        rho = handle.rhos[index]
        encoder_raw, hidden_raw = raw_output(model, index, args, kwargs)
        encoder_out, hidden_out = output
        x, context = kwargs["hidden_states"], kwargs["encoder_hidden_states"]
        assert torch.equal(hidden_out, hidden_raw if rho == 1.0 else hidden_raw - x * (1.0 - rho)), index
        if block_kind == "single" and rho != 1.0:  # the whole (text + image) stream, as in ComfyUI's Flux
            assert torch.equal(encoder_out, encoder_raw - context * (1.0 - rho)), index
        elif encoder_raw is None:  # SD3's last joint block keeps no text stream
            assert encoder_out is None
        else:  # double and joint blocks: only the image stream, as ComfyUI's node
            assert torch.equal(encoder_out, encoder_raw), index
    assert not torch.equal(tuned, plain)
    assert torch.equal(h.run(model, kind), plain)


def test_flux_blocks_are_numbered_double_then_single():
    model = h.flux(double=2, single=3)
    handle = apply_residual_tuning(model, 0.8, 1.0)
    hooked = [bool(block._forward_hooks) for block in model.transformer_blocks] + [
        bool(block._forward_hooks) for block in model.single_transformer_blocks]
    handle.remove()
    assert handle.rhos == block_factors(5, 0.8, 1.0) == pytest.approx((0.8, 0.85, 0.9, 0.95, 1.0))
    assert hooked == [True, True, True, True, False], "the last single block has factor 1"


def test_rho_one_attaches_nothing_remove_restores_and_bfloat16_stays():
    model = h.flux()
    state = h.module_state(model)
    plain = h.run(model, "flux")
    handle = apply_residual_tuning(model, 1.0, 1.0, start=0.3)
    assert not handle.attached and h.module_state(model) == state
    with apply_residual_tuning(model, 0.95, 1.0, start_depth=0.5):
        assert not torch.equal(h.run(model, "flux"), plain)
    assert h.module_state(model) == state
    assert torch.equal(h.run(model, "flux"), plain)

    model = model.to(torch.bfloat16)
    inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in h.unet_inputs("flux").items()}
    plain = h.run(model, "flux", timestep=torch.tensor([0.5], dtype=torch.bfloat16), **inputs)
    with apply_residual_tuning(model, 0.9, 1.0):
        tuned = h.run(model, "flux", timestep=torch.tensor([0.5], dtype=torch.bfloat16), **inputs)
    assert tuned.dtype == torch.bfloat16 and not torch.equal(tuned, plain)


@pytest.mark.parametrize("kwargs, message", [
    ({"rho_first": float("nan")}, "rho_first must be finite"),
    ({"rho_last": -1.0}, "rho_last must be between 0.0 and 2.0"),
    ({"start_depth": 1.0}, r"start_depth must be in \[0, 1\)"),
    ({"start": 0.9, "end": 0.1}, r"start \(0.9\) must not be after end \(0.1\)"),
])
def test_bad_values_raise_and_attach_nothing(kwargs, message):
    model = h.sd3()
    state = h.module_state(model)
    arguments = {"rho_first": 0.9, "rho_last": 1.0, **kwargs}
    with pytest.raises(SkipTuningError, match=message):
        apply_residual_tuning(model, arguments.pop("rho_first"), arguments.pop("rho_last"), **arguments)
    assert h.module_state(model) == state


def shifted(shift, s):
    """ComfyUI's time_snr_shift (SD3) and, with shift = e^mu, flux_time_shift."""
    return shift * s / (1 + (shift - 1) * s)


def tuned_per_call(model, kind, timesteps, handle_kwargs, **apply_kwargs):
    """For each timestep: whether the tuned model's output differs from the plain one."""
    flags = []
    for t in timesteps:
        plain = h.run(model, kind, timestep=torch.tensor([t]))
        with apply_residual_tuning(model, 0.8, 0.9, **handle_kwargs, **apply_kwargs):
            flags.append(not torch.equal(h.run(model, kind, timestep=torch.tensor([t])), plain))
    return flags


def test_the_window_on_sd3s_flow_schedule():
    """SD3's transformer receives sigma * 1000; fraction p is sigma = shift(1 - p) with the scheduler's shift 3."""
    model = h.sd3()
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(8)
    start, end = 0.3, 0.6
    sigma_high, sigma_low = shifted(3.0, 1 - start), shifted(3.0, 1 - end)
    sigmas = scheduler.sigmas[:-1].tolist()
    expected = [sigma_low <= sigma <= sigma_high for sigma in sigmas]
    assert any(expected) and not all(expected)
    flags = tuned_per_call(model, "sd3", scheduler.timesteps.tolist(), {"start": start, "end": end},
                           scheduler=scheduler)
    assert flags == expected


def test_the_window_on_fluxs_dynamic_shift():
    """Flux's transformer receives sigma; the shift mu comes from the image tokens as in FluxPipeline."""
    model = h.flux()
    config = {"use_dynamic_shifting": True, "base_image_seq_len": 256, "max_image_seq_len": 4096,
              "base_shift": 0.5, "max_shift": 1.15}
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(**config)
    tokens = h.unet_inputs("flux")["hidden_states"].shape[1]
    mu = 0.5 + (1.15 - 0.5) * (tokens - 256) / (4096 - 256)
    steps = 8
    scheduler.set_timesteps(sigmas=[1.0 - k / steps for k in range(steps)], mu=mu)
    start, end = 0.2, 0.5
    sigma_high, sigma_low = shifted(math.exp(mu), 1 - start), shifted(math.exp(mu), 1 - end)
    sigmas = scheduler.sigmas[:-1].tolist()
    expected = [sigma_low <= sigma <= sigma_high for sigma in sigmas]
    assert any(expected) and not all(expected)
    flags = tuned_per_call(model, "flux", sigmas, {"start": start, "end": end}, scheduler=scheduler)
    assert flags == expected
    # A bare Flux transformer without a scheduler assumes FluxPipeline's dynamic shifting.
    assert tuned_per_call(model, "flux", sigmas, {"start": start, "end": end}) == expected


def test_pipelines_are_resolved_to_their_transformer():
    model = h.sd3()

    class Pipe:
        transformer = model
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)

    with apply_residual_tuning(Pipe(), 0.9, 1.0) as handle:
        assert handle.model is model and handle.architecture == "SD3Transformer2DModel"


def test_composes_with_first_block_cache_in_either_order():
    """The cache's hooks replace the blocks' forward, the adapter's run around the call: the order in which
    they are applied does not matter, and a block the cache skips (it returns its input) is not scaled."""
    from diffusers.hooks import FirstBlockCacheConfig

    def sample(order, threshold, timesteps):
        model = h.flux()
        tail = residual_blocks(model)[-1][0]
        passed_through = []
        if order == "cache_first":
            model.enable_cache(FirstBlockCacheConfig(threshold=threshold))
            handle = apply_residual_tuning(model, 0.8, 0.9)
        else:
            handle = apply_residual_tuning(model, 0.8, 0.9)
            model.enable_cache(FirstBlockCacheConfig(threshold=threshold))
        tail.register_forward_hook(
            lambda module, args, kwargs, output: passed_through.append(output[1] is kwargs["hidden_states"]),
            with_kwargs=True)
        outputs = []
        for t in timesteps:
            with model.cache_context("cond"):
                outputs.append(h.run(model, "flux", timestep=torch.tensor([t])))
        handle.remove()
        return outputs, passed_through

    cached_a, skipped_a = sample("cache_first", 10.0, (0.9, 0.9, 0.8))
    cached_b, skipped_b = sample("tuning_first", 10.0, (0.9, 0.9, 0.8))
    assert all(torch.equal(a, b) for a, b in zip(cached_a, cached_b))
    assert skipped_a == skipped_b == [False, True, True], "calls 2 and 3 come from the cache, unscaled"

    timesteps = (0.9, 0.85, 0.8)  # a new timestep each call: threshold 0 computes every block every time
    computed, skipped = sample("cache_first", 0.0, timesteps)
    assert skipped == [False, False, False]
    reference = h.flux()
    with apply_residual_tuning(reference, 0.8, 0.9):
        for t, output in zip(timesteps, computed):
            assert torch.equal(h.run(reference, "flux", timestep=torch.tensor([t])), output)
