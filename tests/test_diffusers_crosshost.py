"""One setting, two hosts: the ComfyUI node and the diffusers adapter give the same tuned model.

* The bundled demo U-Net (an ldm UNetModel) is converted to diffusers' UNet2DConditionModel with
  diffusers' own single-file conversion code and denoised at several noise levels through ComfyUI's
  model, tuned by the function the Skip Tuning nodes run, and through the diffusers adapter, with a
  non-uniform schedule and a window, so a wrong skip numbering or a shifted window fails.
* ``start``/``end`` switch at the same steps as ComfyUI's ``percent_to_sigma`` for discrete, EDM (SVD) and
  flow (SD3, Flux) schedules, on the schedules diffusers' schedulers produce.
"""

from __future__ import annotations

import math
import os
import sys

import diffusers_helpers as h
import pytest
import torch

from skip_tuning.diffusers import apply_residual_tuning, apply_skip_tuning

diffusers = h.diffusers
pytestmark = pytest.mark.comfyui

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def demo_unet_in_diffusers(ldm_unet, unet_kwargs):
    """The demo's ldm UNetModel as a diffusers UNet2DConditionModel, weights converted by diffusers."""
    from diffusers.loaders.single_file_utils import LDM_UNET_KEY, convert_ldm_unet_checkpoint

    levels = len(unet_kwargs["channel_mult"])
    attention = [2 ** level in unet_kwargs["attention_resolutions"] for level in range(levels)]
    channels = unet_kwargs["model_channels"]
    config = {
        "sample_size": unet_kwargs["image_size"],
        "in_channels": unet_kwargs["in_channels"],
        "out_channels": unet_kwargs["out_channels"],
        "block_out_channels": tuple(channels * mult for mult in unet_kwargs["channel_mult"]),
        "layers_per_block": unet_kwargs["num_res_blocks"],
        "cross_attention_dim": unet_kwargs["context_dim"],
        # diffusers' legacy name: the number of heads (ldm: channels // num_head_channels at every level)
        "attention_head_dim": channels // unet_kwargs["num_head_channels"],
        "transformer_layers_per_block": unet_kwargs["transformer_depth"],
        "down_block_types": tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        "up_block_types": tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
    }
    assert len(set(config["block_out_channels"])) == 1, "one head count for every level"
    checkpoint = {LDM_UNET_KEY + key: value for key, value in ldm_unet.state_dict().items()}
    unet = diffusers.UNet2DConditionModel(**config)
    missing, unexpected = unet.load_state_dict(convert_ldm_unet_checkpoint(checkpoint, config), strict=True)
    assert not missing and not unexpected
    return unet.eval()


@pytest.fixture(scope="module")
def demo(comfy):
    pytest.importorskip("ldm", reason="the demo model loader needs ldm (stable-diffusion-sdkit)")
    pytest.importorskip("safetensors", reason="the demo weights are safetensors")
    from skip_tuning_demo.model import UNET_WEIGHTS

    if not os.path.exists(UNET_WEIGHTS):
        pytest.skip("demo weights not present")
    if BENCHMARKS not in sys.path:
        sys.path.insert(0, BENCHMARKS)
    from _comfy_demo import load_demo_in_comfy

    patcher, ldm_unet, table, config = load_demo_in_comfy()
    return patcher, demo_unet_in_diffusers(ldm_unet, config["unet_kwargs"]), table, config


def comfy_denoised(patcher, x, sigma, context):
    """One call of ComfyUI's model as its samplers make it (the patches, and the sigmas they gate on)."""
    sigmas = torch.full((x.shape[0],), sigma)
    options = {**patcher.model_options["transformer_options"], "sigmas": sigmas}
    with torch.inference_mode():
        return patcher.model.apply_model(x, sigmas, c_crossattn=context, transformer_options=options).float()


def diffusers_denoised(unet, x, sigma, t, context):
    """The same call in diffusers: eps from the scaled input at timestep t, then x - sigma * eps."""
    with torch.inference_mode():
        eps = unet(x / math.sqrt(sigma ** 2 + 1), torch.tensor([float(t)]), encoder_hidden_states=context).sample
    return x - sigma * eps


def test_the_demo_unet_is_tuned_identically_through_comfyui_and_diffusers(demo, skip_tuning_pack):
    patcher, unet, table, config = demo
    nodes = skip_tuning_pack.skip_tuning.comfyui.adapter
    schedule = config["schedule"]
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=schedule["num_train_timesteps"],
                                        beta_start=schedule["beta_start"], beta_end=schedule["beta_end"],
                                        beta_schedule=schedule["beta_schedule"])
    rho_bottom, rho_top, start, end = 0.6, 1.2, 0.1, 0.7
    tuned_comfy = nodes.apply_skip_tuning(patcher, rho_bottom, rho_top, start, end)  # what the nodes run
    sampling = patcher.get_model_object("model_sampling")
    generator = torch.Generator().manual_seed(0)
    context = table[[3, 10]]
    # window: timestep (1 - 0.1) * 999 = 899.1 down to (1 - 0.7) * 999 = 299.7
    timesteps = (950, 899, 500, 300, 299)
    active = []
    n = len(unet.up_blocks) * 3
    reversed_rhos = [rho_bottom + (rho_top - rho_bottom) * (n - 1 - i) / (n - 1) for i in range(n)]
    for t in timesteps:
        sigma = float(sampling.sigmas[t])
        x = torch.randn(2, 4, 16, 16, generator=generator) * math.sqrt(sigma ** 2 + 1)
        comfy_plain = comfy_denoised(patcher, x, sigma, context)
        comfy_tuned = comfy_denoised(tuned_comfy, x, sigma, context)
        plain = diffusers_denoised(unet, x, sigma, t, context)
        torch.testing.assert_close(plain, comfy_plain, rtol=1e-4, atol=1e-4)
        with apply_skip_tuning(unet, rho_bottom, rho_top, start=start, end=end, scheduler=scheduler):
            tuned = diffusers_denoised(unet, x, sigma, t, context)
        torch.testing.assert_close(tuned, comfy_tuned, rtol=1e-4, atol=1e-4)
        on = not torch.equal(tuned, plain)
        active.append(on)
        if on:
            assert (comfy_tuned - comfy_plain).abs().max() > 1e-2, "an effect far above the tolerance"
        else:
            assert torch.equal(comfy_tuned, comfy_plain)
        if t == 500:  # the opposite skip numbering does not match ComfyUI
            with apply_skip_tuning(unet, rho_per_skip=reversed_rhos, start=start, end=end, scheduler=scheduler):
                wrong = diffusers_denoised(unet, x, sigma, t, context)
            assert (wrong - comfy_tuned).abs().max() > 1e-2
    assert active == [False, True, True, True, False]


# ---------------------------------------------------------------------------------------------
# The window across schedule families, against ComfyUI's own percent_to_sigma


def comfy_active(model_sampling, sigmas, start, end):
    high, low = model_sampling.percent_to_sigma(start), model_sampling.percent_to_sigma(end)
    return [float(low) <= float(sigma) <= float(high) for sigma in sigmas]


def skips_scaled(model, kind, timesteps, **apply_kwargs):
    """Per timestep: whether apply_skip_tuning scaled the U-Net's skips in that call."""
    flags = []
    with h.unet_skip_probe(model) as calls, apply_skip_tuning(model, 0.5, 0.5, **apply_kwargs):
        for t in timesteps:
            h.run(model, kind, timestep=torch.tensor([float(t)]))
    for call in calls:
        pairs = h.received_skips(call)
        flags.append(not all(torch.equal(received, pushed) for pushed, received in pairs))
    return flags


def test_discrete_window_matches_comfyui_with_karras_sigmas(comfy):
    """Euler with Karras sigmas feeds fractional timesteps; the decisions are ComfyUI's sigma comparisons."""
    import comfy.model_sampling

    scheduler = diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                                 beta_end=0.012, use_karras_sigmas=True)
    scheduler.set_timesteps(12)
    start, end = 0.2, 0.75
    expected = comfy_active(comfy.model_sampling.ModelSamplingDiscrete(), scheduler.sigmas[:-1], start, end)
    assert any(expected) and not all(expected)
    flags = skips_scaled(h.unet_2d(), "unet2d", scheduler.timesteps.tolist(), start=start, end=end,
                         scheduler=scheduler)
    assert flags == expected


def test_edm_window_matches_comfyui_for_svd(comfy):
    """SVD's U-Net gets c_noise = 0.25 ln(sigma); ComfyUI's SVD samples with sigma_min 0.002, sigma_max 700."""
    import comfy.model_sampling

    scheduler = diffusers.EulerDiscreteScheduler(
        prediction_type="v_prediction", timestep_type="continuous", use_karras_sigmas=True,
        sigma_min=0.002, sigma_max=700.0, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    scheduler.set_timesteps(10)
    assert torch.allclose(scheduler.timesteps, 0.25 * scheduler.sigmas[:-1].log())
    sampling = comfy.model_sampling.ModelSamplingContinuousEDM()
    sampling.set_parameters(sigma_min=0.002, sigma_max=700.0, sigma_data=1.0)
    start, end = 0.3, 0.8
    expected = comfy_active(sampling, scheduler.sigmas[:-1], start, end)
    assert any(expected) and not all(expected)
    model = h.svd_unet()
    assert skips_scaled(model, "svd", scheduler.timesteps.tolist(), start=start, end=end,
                        scheduler=scheduler) == expected
    # A bare SVD U-Net without a scheduler assumes the same EDM sigmas.
    assert skips_scaled(model, "svd", scheduler.timesteps.tolist(), start=start, end=end) == expected


def residual_tuned(model, kind, timesteps, **apply_kwargs):
    flags = []
    for t in timesteps:
        plain = h.run(model, kind, timestep=torch.tensor([float(t)]))
        with apply_residual_tuning(model, 0.8, 0.9, **apply_kwargs):
            flags.append(not torch.equal(h.run(model, kind, timestep=torch.tensor([float(t)])), plain))
    return flags


def test_flow_windows_match_comfyui_for_sd3_and_flux(comfy):
    import comfy.model_sampling

    start, end = 0.25, 0.6
    sd3_scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    sd3_scheduler.set_timesteps(8)
    sd3_sampling = comfy.model_sampling.ModelSamplingDiscreteFlow()
    sd3_sampling.set_parameters(shift=3.0)
    expected = comfy_active(sd3_sampling, sd3_scheduler.sigmas[:-1], start, end)
    assert any(expected) and not all(expected)
    assert residual_tuned(h.sd3(), "sd3", sd3_scheduler.timesteps.tolist(), start=start, end=end,
                          scheduler=sd3_scheduler) == expected

    # Flux: the run's mu from the image tokens, as FluxPipeline and ComfyUI's ModelSamplingFlux node compute it.
    tokens = h.unet_inputs("flux")["hidden_states"].shape[1]
    mu = 0.5 + (1.15 - 0.5) * (tokens - 256) / (4096 - 256)
    flux_scheduler = diffusers.FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_image_seq_len=256, max_image_seq_len=4096, base_shift=0.5, max_shift=1.15)
    flux_scheduler.set_timesteps(sigmas=[1.0 - k / 8 for k in range(8)], mu=mu)
    flux_sampling = comfy.model_sampling.ModelSamplingFlux()
    flux_sampling.set_parameters(shift=mu)
    sigmas = flux_scheduler.sigmas[:-1]
    expected = comfy_active(flux_sampling, sigmas, start, end)
    assert any(expected) and not all(expected)
    assert residual_tuned(h.flux(), "flux", sigmas.tolist(), start=start, end=end,
                          scheduler=flux_scheduler) == expected
