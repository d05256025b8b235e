"""Latent consistency distillation (LCM, Luo et al. 2023) of the demo U-Net, as ComfyUI samples it.

The student is the teacher's architecture, started from the teacher's weights, and is trained so
that ComfyUI runs it unchanged as an LCM model (``ModelSamplingDiscrete`` with ``lcm``, sampler
``lcm``). Every quantity below is the one ComfyUI uses for such a model
(``comfy_extras/nodes_model_advanced.py``):

* the model is called on the 50 timesteps 19, 39, ..., 999 only (1000 training timesteps, a
  skipping step of 20), with the VP sample as input and epsilon as output;
* the consistency function is ``f(x, t) = c_skip(t) * x / sqrt(alpha_bar_t) + c_out(t) * x0``,
  with ``x0`` from epsilon, ``sigma_data = 0.5`` and the timestep scaled by 10.

One distillation step (the LCM recipe, guidance folded in):

1. pick a grid timestep ``t`` and noise a training latent to ``x_t``;
2. the frozen teacher takes one DDIM step ``t -> t - 20`` with classifier-free guidance at a fixed
   scale (CFG as ComfyUI counts it: ``uncond + s * (cond - uncond)``);
3. the target network (an EMA of the student) maps that sample to ``x0`` (``f`` at ``t - 20``; at
   ``t - 20 < 0`` the boundary condition makes ``f`` the identity);
4. the student's ``f(x_t, t)`` is pulled to that target by a pseudo-Huber loss.

Labels are dropped to the null context as in the base training, so the student's unconditional
output stays meaningful for CFG above 1 at sampling time.
"""

from __future__ import annotations

import torch

NUM_TRAIN_TIMESTEPS = 1000
LCM_GRID_STEPS = 50
SKIPPING_STEP = NUM_TRAIN_TIMESTEPS // LCM_GRID_STEPS
SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0


def lcm_grid_timesteps(device=None) -> torch.Tensor:
    """The timesteps an LCM model is ever called at, ascending: 19, 39, ..., 999."""
    return torch.arange(1, LCM_GRID_STEPS + 1, device=device) * SKIPPING_STEP - 1


def boundary_scalings(timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) of ComfyUI's LCM sampling; c_skip(0) = 1 and c_out(0) = 0."""
    scaled = timesteps.float() * TIMESTEP_SCALING
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
    return c_skip, c_out


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.ndim - 1)))


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    a = _per_sample(alpha_bar, x_t)
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


def consistency_output(
    x_t: torch.Tensor, eps: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """ComfyUI's LCM denoised output for the network's epsilon at (x_t, t), t >= 0."""
    alpha_bar = alphas_cumprod[timesteps]
    c_skip, c_out = boundary_scalings(timesteps)
    x_ve = x_t / _per_sample(alpha_bar, x_t).sqrt()  # ComfyUI's sample in sigma (VE) scale
    return _per_sample(c_skip, x_t) * x_ve + _per_sample(c_out, x_t) * x0_from_eps(x_t, eps, alpha_bar)


def ddim_step(
    x_t: torch.Tensor, eps: torch.Tensor, timesteps: torch.Tensor, prev_timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
) -> torch.Tensor:
    """The deterministic DDIM update from t to prev (prev = -1 means alpha_bar = alphas_cumprod[0], as LCM)."""
    x0 = x0_from_eps(x_t, eps, alphas_cumprod[timesteps])
    alpha_prev = _per_sample(alphas_cumprod[prev_timesteps.clamp(min=0)], x_t)
    return alpha_prev.sqrt() * x0 + (1 - alpha_prev).sqrt() * eps


def pseudo_huber(prediction: torch.Tensor, target: torch.Tensor, c: float) -> torch.Tensor:
    return (torch.sqrt((prediction.float() - target.float()) ** 2 + c * c) - c).mean()


def lcm_distillation_loss(
    student, target_net, teacher, x0, noise, labels, grid_index, alphas_cumprod, guidance: float,
    null_index: int, huber_c: float,
) -> torch.Tensor:
    """One LCD loss on a batch; each network is called as ``net(x, t, labels) -> eps``."""
    grid = lcm_grid_timesteps(x0.device)
    t = grid[grid_index]
    t_prev = t - SKIPPING_STEP  # -1 for the first grid step: the boundary
    a = _per_sample(alphas_cumprod[t], x0)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise

    prediction = consistency_output(x_t, student(x_t, t, labels), t, alphas_cumprod)
    with torch.no_grad():
        null = torch.full_like(labels, null_index)
        eps_cond, eps_uncond = teacher(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([labels, null])).chunk(2)
        eps_guided = eps_uncond + guidance * (eps_cond - eps_uncond)
        x_prev = ddim_step(x_t, eps_guided, t, t_prev, alphas_cumprod)
        target_t = t_prev.clamp(min=0)
        target = consistency_output(x_prev, target_net(x_prev, target_t, labels), target_t, alphas_cumprod)
    return pseudo_huber(prediction, target, huber_c)
