"""Sampling the demo model with diffusers' schedulers and classifier-free guidance.

All solver math lives in ``diffusers``; this module only builds the schedulers
with the model's training schedule (SD's scaled-linear betas 0.00085 -> 0.012
over 1000 steps, epsilon prediction) and runs the denoising loop.

The ``unet`` argument may be any callable ``unet(x, timesteps, context=ctx)``
returning epsilon, e.g. the ldm ``UNetModel`` from
:func:`skip_tuning_demo.model.load_demo_model`, possibly patched with
Skip-Tuning.  Initial noise is given by the caller so benchmarks can use
common random numbers; stochastic schedulers draw their per-step noise from
``step_seed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import torch

from .model import (
    LATENT_CHANNELS,
    LATENT_SIZE,
    NULL_INDEX,
    SCHEDULE,
    context_for,
    null_context,
    unpack_latents,
)

# name -> (diffusers class name, extra constructor kwargs)
_SCHEDULERS: dict[str, tuple] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "unipc": ("UniPCMultistepScheduler", {}),
    # DDIMScheduler.step jumps from t to t - 1000 // steps, so its timesteps must be spaced exactly
    # that far apart: with "linspace" (999, 799, ... at 6 steps) every step lands on a noise level
    # the next model call does not assume, and samples keep visible noise (FD 148 instead of 15).
    # "trailing" starts at t = 999 and keeps that spacing.
    "ddim": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False, "timestep_spacing": "trailing"}),
    "lms": ("LMSDiscreteScheduler", {}),
}

#: Schedulers that inject fresh noise at every step (driven by ``step_seed``).
STOCHASTIC_SCHEDULERS = ("euler_a", "dpmpp_2m_sde")

#: Human-readable labels for reports.
SCHEDULER_LABELS = {
    "euler": "Euler",
    "euler_a": "Euler ancestral",
    "heun": "Heun",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "unipc": "UniPC",
    "ddim": "DDIM",
    "lms": "LMS",
}

SCHEDULER_NAMES = tuple(_SCHEDULERS)


def make_scheduler(
    name: str,
    schedule: dict[str, Any] | None = None,
    timestep_spacing: str | None = None,
    karras: bool = False,
    **overrides,
):
    """Build a fresh diffusers scheduler configured with the demo model's schedule.

    ``timestep_spacing`` defaults to ``"linspace"`` (first step at t=999, like
    the "normal" schedule of ComfyUI/A1111), except for DDIM (``"trailing"``,
    see ``_SCHEDULERS``).  ``karras=True`` requests Karras sigmas where the
    scheduler supports it.
    """
    import diffusers

    if name not in _SCHEDULERS:
        raise ValueError("unknown scheduler {!r}; choose from {}".format(name, ", ".join(SCHEDULER_NAMES)))
    cls_name, extra = _SCHEDULERS[name]
    cls = getattr(diffusers, cls_name)
    sch = dict(SCHEDULE if schedule is None else schedule)
    kwargs = {
        "num_train_timesteps": int(sch["num_train_timesteps"]),
        "beta_start": float(sch["beta_start"]),
        "beta_end": float(sch["beta_end"]),
        "beta_schedule": sch.get("beta_schedule", "scaled_linear"),
        "prediction_type": sch.get("prediction_type", "epsilon"),
        "timestep_spacing": "linspace",
    }
    kwargs.update(extra)
    if timestep_spacing is not None:
        kwargs["timestep_spacing"] = timestep_spacing
    if karras:
        kwargs["use_karras_sigmas"] = True
    kwargs.update(overrides)
    return cls(**kwargs)


def make_noise(
    batch: int, seed: int, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Seeded standard-normal initial latent noise ``[batch, 4, 16, 16]`` (drawn on CPU)."""
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn((batch, LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE), generator=g).to(device=device, dtype=dtype)


def _step_kwargs(scheduler, generator) -> dict[str, Any]:
    import inspect

    params = inspect.signature(scheduler.step).parameters
    return {"generator": generator} if "generator" in params else {}


@torch.no_grad()
def sample_latents(
    unet: Callable,
    context_table: torch.Tensor,
    labels: Sequence[int] | torch.Tensor,
    scheduler_name: str = "dpmpp_2m",
    steps: int = 50,
    cfg: float = 3.5,
    noise: torch.Tensor | None = None,
    *,
    seed: int = 0,
    step_seed: int | None = None,
    negative_labels: Sequence[int] | torch.Tensor | None = None,
    batch_size: int = 256,
    schedule: dict[str, Any] | None = None,
    scheduler_kwargs: dict[str, Any] | None = None,
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Run the sampler and return final latents ``[B, 4, 16, 16]``.

    ``labels`` are class indices (10 = unconditional/null context).
    ``negative_labels`` (optional) replace the null context in the
    unconditional branch of classifier-free guidance, like a negative prompt.
    With ``cfg == 1`` only the conditional branch is evaluated.
    ``noise`` defaults to :func:`make_noise` with ``seed``.  Requests larger
    than ``batch_size`` are processed in chunks (each with a fresh scheduler);
    stochastic schedulers draw per-step noise from a CPU generator seeded with
    ``step_seed`` (default: ``seed + 1``), consumed chunk by chunk.
    ``callback(step_index, total_steps, latents)`` is called after each step.
    """
    device = context_table.device
    dtype = context_table.dtype
    if not torch.is_tensor(labels):
        labels = torch.as_tensor(list(labels), dtype=torch.long)
    labels = labels.to(device=device, dtype=torch.long)
    total = labels.shape[0]
    if noise is None:
        noise = make_noise(total, seed, device, dtype)
    if noise.shape[0] != total:
        raise ValueError(f"noise batch {noise.shape[0]} != number of labels {total}")
    neg = None
    if negative_labels is not None:
        neg = negative_labels if torch.is_tensor(negative_labels) else torch.as_tensor(list(negative_labels))
        neg = neg.to(device=device, dtype=torch.long)
        if neg.shape[0] != total:
            raise ValueError("negative_labels must match labels in length")
    gen = torch.Generator(device="cpu").manual_seed(int(seed + 1 if step_seed is None else step_seed))
    use_cfg = float(cfg) != 1.0

    out = []
    for start in range(0, total, max(1, int(batch_size))):
        lab = labels[start : start + batch_size]
        b = lab.shape[0]
        cond = context_for(lab, context_table)
        if use_cfg:
            uncond = (
                context_for(neg[start : start + b], context_table)
                if neg is not None
                else null_context(b, context_table)
            )
            ctx = torch.cat([cond, uncond], dim=0)
        else:
            ctx = cond
        scheduler = make_scheduler(scheduler_name, schedule, **(scheduler_kwargs or {}))
        scheduler.set_timesteps(int(steps), device="cpu")
        step_kw = _step_kwargs(scheduler, gen)
        x = noise[start : start + b].to(device=device, dtype=torch.float32) * scheduler.init_noise_sigma
        timesteps = scheduler.timesteps
        for i, t in enumerate(timesteps):
            x_in = scheduler.scale_model_input(x, t)
            if use_cfg:
                x_in = torch.cat([x_in, x_in], dim=0)
            t_batch = torch.full((x_in.shape[0],), float(t), device=device, dtype=torch.float32)
            eps = unet(x_in.to(dtype), t_batch, context=ctx).float()
            if use_cfg:
                e_c, e_u = eps.chunk(2)
                eps = e_u + float(cfg) * (e_c - e_u)
            x = scheduler.step(eps, t, x, **step_kw).prev_sample
            if callback is not None:
                callback(i, len(timesteps), x)
        out.append(x)
    return torch.cat(out, dim=0)


@torch.no_grad()
def sample(
    unet: Callable,
    context_table: torch.Tensor,
    labels: Sequence[int] | torch.Tensor,
    scheduler_name: str = "dpmpp_2m",
    steps: int = 50,
    cfg: float = 3.5,
    noise: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor:
    """Like :func:`sample_latents` but returns images ``[B, 1, 32, 32]`` in [-1, 1]."""
    lat = sample_latents(unet, context_table, labels, scheduler_name, steps, cfg, noise, **kwargs)
    return unpack_latents(lat).clamp(-1.0, 1.0)


def save_grid(images: torch.Tensor, path: str, nrow: int = 10, upscale: int = 2) -> None:
    """Save ``[B, 1, H, W]`` images in [-1, 1] as a PNG grid (needs Pillow)."""
    import numpy as np
    from PIL import Image

    imgs = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu().numpy()[:, 0]
    b, h, w = imgs.shape
    ncol = min(nrow, b)
    nrows = (b + ncol - 1) // ncol
    grid = np.zeros((nrows * (h + 2) + 2, ncol * (w + 2) + 2), dtype=np.uint8)
    grid[:] = 128
    for k in range(b):
        r, c = divmod(k, ncol)
        grid[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + c * (w + 2) : 2 + c * (w + 2) + w] = imgs[k]
    im = Image.fromarray(grid, mode="L")
    if upscale > 1:
        im = im.resize((im.width * upscale, im.height * upscale), Image.NEAREST)
    im.save(path)


__all__ = [
    "SCHEDULER_NAMES",
    "SCHEDULER_LABELS",
    "STOCHASTIC_SCHEDULERS",
    "NULL_INDEX",
    "make_scheduler",
    "make_noise",
    "sample_latents",
    "sample",
    "save_grid",
]
