"""The bundled demo models inside ComfyUI, sampled by comfy.sample.sample (what KSampler runs).

Builds ComfyUI's own UNetModel with the demo layout in a BaseModel (EPS, SD's discrete
scaled-linear schedule, latent scale 1), or the demo U-ViT in ComfyUI's HunyuanDiT model
(the same schedule and latents), loads the shipped weights, and applies Skip Tuning
through the function behind the ComfyUI node (skip_tuning.comfyui.adapter).
Needs a ComfyUI checkout ($COMFYUI_PATH, ~/ComfyUI or ../shared/ComfyUI); see _common.import_comfy.
"""

from __future__ import annotations

import torch
from _common import import_comfy

# diffusers scheduler name in skip_tuning_demo.sampling -> ComfyUI sampler name
COMFY_SAMPLERS = {
    "euler": "euler",
    "euler_a": "euler_ancestral",
    "heun": "heun",
    "dpmpp_2m": "dpmpp_2m",
    "dpmpp_2m_sde": "dpmpp_2m_sde",
    "unipc": "uni_pc",
    "ddim": "ddim",
    "lms": "lms",
    "lcm": "lcm",
    "dpmpp_sde": "dpmpp_sde",
    "unipc_bh2": "uni_pc_bh2",
    "deis": "deis",
    "res_multistep": "res_multistep",
    "ipndm": "ipndm",
    "er_sde": "er_sde",
    "euler_cfg_pp": "euler_cfg_pp",
    "dpmpp_2m_cfg_pp": "dpmpp_2m_cfg_pp",
}
# KSampler's schedulers (comfy.samplers.SCHEDULER_NAMES) measured, and the optimized step schedules ComfyUI ships
# as SIGMAS nodes for SamplerCustom: AlignYourSteps (its SD1 schedule) and GITS (coefficient 1.20, its default).
KSAMPLER_SCHEDULERS = ("normal", "karras", "exponential", "sgm_uniform", "beta", "kl_optimal")
OPTIMIZED_SCHEDULES = ("ays", "gits")


def comfy_unet_config(unet_kwargs: dict) -> dict:
    """ldm UNetModel kwargs of the demo model -> ComfyUI UNetModel kwargs (per-block depths)."""
    levels = len(unet_kwargs["channel_mult"])
    res_blocks = int(unet_kwargs["num_res_blocks"])
    depth = int(unet_kwargs.get("transformer_depth", 1))
    attention_levels = {level for level in range(levels) if 2**level in set(unet_kwargs["attention_resolutions"])}
    per_input = [depth if level in attention_levels else 0 for level in range(levels) for _ in range(res_blocks)]
    # ComfyUI pops transformer_depth_output from the end: listed from the top level down to the deepest.
    per_output = [depth if level in attention_levels else 0 for level in range(levels) for _ in range(res_blocks + 1)]
    return {
        "image_size": unet_kwargs["image_size"],
        "in_channels": unet_kwargs["in_channels"],
        "out_channels": unet_kwargs["out_channels"],
        "model_channels": unet_kwargs["model_channels"],
        "num_res_blocks": [res_blocks] * levels,
        "channel_mult": list(unet_kwargs["channel_mult"]),
        "transformer_depth": per_input,
        "transformer_depth_output": per_output,
        "transformer_depth_middle": depth,
        "num_heads": int(unet_kwargs.get("num_heads", -1)),
        "num_head_channels": int(unet_kwargs.get("num_head_channels", -1)),
        "context_dim": unet_kwargs["context_dim"],
        "use_spatial_transformer": True,
        "use_linear_in_transformer": bool(unet_kwargs.get("use_linear_in_transformer", False)),
        "legacy": bool(unet_kwargs.get("legacy", False)),
        "adm_in_channels": None,
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
        "dtype": torch.float32,
    }


def load_demo_in_comfy(weights_dir=None):
    """(ModelPatcher of a demo U-Net (default: the bundled one), the ldm UNetModel, class table [11, L, D], config)."""
    if not import_comfy():
        raise RuntimeError("no ComfyUI checkout found (set COMFYUI_PATH)")
    import comfy.model_base
    import comfy.supported_models_base

    from skip_tuning_demo.model import load_demo_model

    ldm_unet, table, config = load_demo_model(weights_dir=weights_dir)

    class DemoFashionUNet(comfy.supported_models_base.BASE):
        unet_extra_config = {}
        supported_inference_dtypes = [torch.float32]

    model_config = DemoFashionUNet(comfy_unet_config(config["unet_kwargs"]))
    base = comfy.model_base.BaseModel(model_config, model_type=comfy.model_base.ModelType.EPS)
    missing, unexpected = base.diffusion_model.load_state_dict(ldm_unet.state_dict(), strict=True)
    assert not missing and not unexpected
    return _patcher(base, config), ldm_unet, table, config


def load_uvit_in_comfy():
    """(ModelPatcher of the demo U-ViT in ComfyUI's HunyuanDiT model, the network, class table, config)."""
    if not import_comfy():
        raise RuntimeError("no ComfyUI checkout found (set COMFYUI_PATH)")
    import comfy.model_base
    import comfy.supported_models_base

    from skip_tuning_demo.uvit import load_uvit_model

    net, table, config = load_uvit_model()

    class DemoFashionUViT(comfy.supported_models_base.BASE):  # latent scale 1, SD's discrete schedule
        unet_config = {"image_model": "hydit"}
        unet_extra_config = {}
        supported_inference_dtypes = [torch.float32]

    model_config = DemoFashionUViT({"image_model": "hydit", **config["uvit_kwargs"]})
    base = comfy.model_base.HunyuanDiT(model_config, model_type=comfy.model_base.ModelType.EPS)
    missing, unexpected = base.diffusion_model.load_state_dict(net.state_dict(), strict=True)
    assert not missing and not unexpected
    return _patcher(base, config), net, table, config


def load_dit_in_comfy():
    """(ModelPatcher of the demo DiT in ComfyUI's Flux model, the network, class table, config).

    A FLUX-type model (velocity, ``denoised = x - sigma * v``) whose time shift is the identity
    (ComfyUI's Flux shift is the log-shift mu; mu = 0 leaves t alone), as the DiT was trained.
    """
    if not import_comfy():
        raise RuntimeError("no ComfyUI checkout found (set COMFYUI_PATH)")
    import comfy.model_base
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models_base

    from skip_tuning_demo.dit import load_dit_model

    net, table, config = load_dit_model()

    class DemoFashionDiT(comfy.supported_models_base.BASE):  # latent scale 1
        unet_config = {"image_model": "flux"}
        unet_extra_config = {}
        sampling_settings = {"shift": 0.0}
        supported_inference_dtypes = [torch.float32]

    model_config = DemoFashionDiT({"image_model": "flux", **config["dit_kwargs"]})
    base = comfy.model_base.Flux(model_config)
    missing, unexpected = base.diffusion_model.load_state_dict(net.state_dict(), strict=True)
    assert not missing and not unexpected
    base.eval()
    patcher = comfy.model_patcher.ModelPatcher(
        base, load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )
    return patcher, net, table, config


def lcm_sampling(patcher):
    """The patcher as ComfyUI's ModelSamplingDiscrete node returns it with sampling "lcm" (how LCM models and
    LoRAs are run), called through the node class itself: V1 ``patch`` or V3 ``execute``, whichever it has."""
    from comfy_extras import nodes_model_advanced

    node = nodes_model_advanced.ModelSamplingDiscrete
    execute = getattr(node, "execute", None)
    result = execute(patcher, "lcm", False) if execute is not None else node().patch(patcher, "lcm", False)
    return result[0]


def residual_tuned(patcher, factors):
    """A clone of the patcher whose DiT blocks run ``rho_l * x + F_l(x)`` (the core's replace patches)."""
    from skip_tuning.residual import find_residual_layout, with_residual_replace_patches

    if all(float(rho) == 1.0 for rho in factors):
        return patcher
    layout = find_residual_layout(patcher.model.diffusion_model)
    tuned = patcher.clone()
    options = tuned.model_options.get("transformer_options", {})
    tuned.model_options["transformer_options"] = with_residual_replace_patches(options, layout.block_keys, factors)
    return tuned


def _patcher(base, config):
    import comfy.model_management
    import comfy.model_patcher

    base.eval()
    schedule = base.model_sampling
    expected_last = 1.0 - config["schedule"]["beta_end"]  # last alpha of the scaled-linear schedule
    alphas_cumprod = 1.0 / (1.0 + schedule.sigmas.double() ** 2)
    if abs(float(alphas_cumprod[-1] / alphas_cumprod[-2]) - expected_last) > 1e-4:
        raise RuntimeError("ComfyUI's discrete schedule does not match the demo model's")
    return comfy.model_patcher.ModelPatcher(
        base, load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )


def class_conditioning(table, index: int, kind: str = "unet") -> list:
    """CONDITIONING for one class row of the table. HunyuanDiT (``uvit``) also reads it as its mT5
    tokens; Flux (``dit``) takes the tokens' mean as its pooled vector, as in training."""
    context = table[index].unsqueeze(0).clone()
    if kind == "dit":
        return [[context, {"pooled_output": context.mean(dim=1)}]]
    if kind != "uvit":
        return [[context, {}]]
    mask = torch.ones(context.shape[:2], dtype=torch.long)
    return [[context, {"attention_mask": mask, "conditioning_mt5xl": context.clone(), "attention_mask_mt5xl": mask}]]


def skip_tuned(patcher, rho_bottom: float, rho_top: float = 1.0):
    """The patcher as the Skip Tuning node returns it (plain when rho_bottom == rho_top == 1)."""
    if rho_bottom == 1.0 and rho_top == 1.0:
        return patcher
    from skip_tuning.comfyui.adapter import apply_skip_tuning

    return apply_skip_tuning(patcher, rho_bottom, rho_top)


def optimized_sigmas(schedule: str, steps: int) -> torch.Tensor:
    """The sigmas ComfyUI's AlignYourStepsScheduler ("SD1") or GITSScheduler (coeff 1.20) node outputs at full
    denoise, computed by the node class itself (V3 ``execute`` or V1 ``get_sigmas``)."""
    if schedule == "ays":
        from comfy_extras.nodes_align_your_steps import AlignYourStepsScheduler as node

        args = ("SD1", steps, 1.0)
    elif schedule == "gits":
        from comfy_extras.nodes_gits import GITSScheduler as node

        args = (1.20, steps, 1.0)
    else:
        raise ValueError(f"unknown optimized schedule {schedule!r}; known: {OPTIMIZED_SCHEDULES}")
    execute = getattr(node, "execute", None)
    result = execute(*args) if execute is not None else node().get_sigmas(*args)
    return getattr(result, "result", result)[0]


@torch.no_grad()
def comfy_sample_latents(patcher, table, labels, sampler: str, steps: int, cfg: float, noise: torch.Tensor,
                         seed: int, scheduler: str = "normal", kind: str = "unet") -> torch.Tensor:
    """Latents for ``labels``, one call per class (conditioning is per batch): comfy.sample.sample (KSampler) for
    its schedulers; for an optimized schedule its node's sigmas and comfy.sample.sample_custom, as SamplerCustom
    runs them."""
    import comfy.sample
    import comfy.samplers

    from skip_tuning_demo.model import NULL_INDEX

    labels = torch.as_tensor(labels, dtype=torch.long)
    out = torch.empty_like(noise)
    for cls in torch.unique(labels).tolist():
        index = (labels == cls).nonzero().flatten()
        positive = class_conditioning(table, cls, kind)
        negative = class_conditioning(table, NULL_INDEX, kind)
        batch_noise = noise[index].contiguous()
        latent = torch.zeros_like(batch_noise)
        with torch.inference_mode():
            if scheduler in OPTIMIZED_SCHEDULES:
                samples = comfy.sample.sample_custom(
                    patcher, batch_noise, cfg, comfy.samplers.sampler_object(COMFY_SAMPLERS[sampler]),
                    optimized_sigmas(scheduler, steps), positive, negative, latent, seed=seed + cls,
                    disable_pbar=True,
                )
            else:
                samples = comfy.sample.sample(
                    patcher, batch_noise, steps, cfg, COMFY_SAMPLERS[sampler], scheduler, positive, negative,
                    latent, seed=seed + cls, disable_pbar=True,
                )
        out[index] = samples.float()
    return out
