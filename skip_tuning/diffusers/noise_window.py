"""``start``/``end`` as bounds on the timestep a diffusers model receives, in ComfyUI's convention.

``start`` and ``end`` are fractions of the noise schedule (0 = the highest noise, 1 = none), not step
counters, exactly as ComfyUI's ``percent_to_sigma`` reads its start/end inputs; tuning is active while
``sigma(end) <= sigma <= sigma(start)``. Each model call is judged on its own timestep, so the window
holds for every scheduler, step count and split or restarted sampling. Per schedule family:

* discrete (SD1.x/2.x, SDXL, AnimateDiff, ModelScope, HunyuanDiT, DDPM/DDIM/Euler/DPM++ ... on
  ``num_train_timesteps`` T): fraction p is timestep ``(1 - p) * (T - 1)``. sigma grows with the
  timestep, and the schedulers that feed fractional timesteps (Karras sigmas) interpolate log-sigma
  linearly between them as ComfyUI does, so comparing timesteps compares sigmas.
* EDM (SVD, and U-Nets run by an ``EDM*`` scheduler or by Euler with continuous v-prediction
  timesteps): sigma(p) = exp(ln smin + (1 - p) (ln smax - ln smin)) with the scheduler's
  sigma_min/sigma_max; the model receives c_noise = 0.25 ln(sigma).
* flow (Flux, SD3): sigma(p) = shift(1 - p), with the scheduler's shift: ``shift * s / (1 + (shift - 1) s)``,
  or for ``use_dynamic_shifting`` the shift mu its pipeline computes from the image token count (what
  ComfyUI's ModelSamplingFlux node computes from the resolution). Flux's transformer receives sigma,
  SD3's sigma * T.

A call whose timestep is missing is tuned (ComfyUI tunes a call without sigmas too).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Callable

import torch

from .layouts import FLOW_TIMESTEP_IS_SIGMA, flow_timestep_convention, image_tokens, is_edm_unet

# Used when a bare model is given without a scheduler (documented in docs/diffusers.md).
DEFAULT_TRAIN_TIMESTEPS = 1000
SVD_SIGMAS = (0.002, 700.0)  # diffusers' SVD scheduler config, ComfyUI's SVD sampling settings
SD3_SHIFT = 3.0
FLUX_DYNAMIC_SHIFT = {"use_dynamic_shifting": True, "base_image_seq_len": 256, "max_image_seq_len": 4096,
                      "base_shift": 0.5, "max_shift": 1.15}


def scheduler_config(scheduler) -> tuple[str, Mapping]:
    """(class name, config) of a diffusers scheduler, or of a scheduler config given as a mapping."""
    if scheduler is None:
        return "", {}
    if isinstance(scheduler, Mapping):
        return str(scheduler.get("_class_name", "")), scheduler
    config = getattr(scheduler, "config", None)
    return type(scheduler).__name__, config if isinstance(config, Mapping) else {}


def _flow_shift_fn(config: Mapping, tokens: int | None, default: Mapping) -> Callable[[float], float]:
    """s (1 = pure noise) -> sigma under the shift this call is sampled with."""
    settings = config if ("use_dynamic_shifting" in config or "shift" in config or "flow_shift" in config) else default
    if settings.get("use_dynamic_shifting"):
        base_len = float(settings.get("base_image_seq_len", 256))
        max_len = float(settings.get("max_image_seq_len", 4096))
        base_shift = float(settings.get("base_shift", 0.5))
        max_shift = float(settings.get("max_shift", 1.15))
        length = max_len if tokens is None else float(tokens)
        mu = base_shift + (max_shift - base_shift) * (length - base_len) / (max_len - base_len)
        if settings.get("time_shift_type", "exponential") == "linear":
            return lambda s: mu / (mu + (1.0 / s - 1.0))
        factor = math.exp(mu)
    else:
        key = "flow_shift" if settings.get("use_flow_sigmas") and "flow_shift" in settings else "shift"
        factor = float(settings.get(key, 1.0))
    return lambda s: factor * s / (1.0 + (factor - 1.0) * s)


class NoiseWindow:
    """Decides per model call whether its timestep lies in the window.

    ``scheduler_source`` returns the scheduler (or its config) at call time, so a pipeline whose
    scheduler is swapped after tuning was applied is still judged on the one it samples with.
    """

    def __init__(self, start: float, end: float, model, scheduler_source: Callable[[], object]):
        self.start = start
        self.end = end
        self.model = model
        self.scheduler_source = scheduler_source

    def timestep_bounds(self, hidden_states=None) -> tuple[float, float]:
        """(low, high) on the model's timestep argument; +-inf where the window is open."""
        name, config = scheduler_config(self.scheduler_source())
        convention = flow_timestep_convention(self.model)
        if convention is not None:
            default = FLUX_DYNAMIC_SHIFT if convention == FLOW_TIMESTEP_IS_SIGMA else {"shift": SD3_SHIFT}
            shift = _flow_shift_fn(config, image_tokens(self.model, hidden_states), default)
            per_sigma = 1.0 if convention == FLOW_TIMESTEP_IS_SIGMA else float(
                config.get("num_train_timesteps", DEFAULT_TRAIN_TIMESTEPS))
            return self._bounds(lambda p: shift(1.0 - p) * per_sigma)
        continuous = config.get("timestep_type") == "continuous" and config.get("prediction_type") == "v_prediction"
        if name.startswith("EDM") or continuous or (not config and is_edm_unet(self.model)):
            sigma_min = config.get("sigma_min") or SVD_SIGMAS[0]
            sigma_max = config.get("sigma_max") or SVD_SIGMAS[1]
            log_min, log_max = math.log(sigma_min), math.log(sigma_max)
            return self._bounds(lambda p: 0.25 * (log_min + (1.0 - p) * (log_max - log_min)))
        last = float(config.get("num_train_timesteps", DEFAULT_TRAIN_TIMESTEPS)) - 1.0
        return self._bounds(lambda p: (1.0 - p) * last)

    def _bounds(self, timestep_at: Callable[[float], float]) -> tuple[float, float]:
        # ComfyUI's percent_to_sigma: start 0 is above every sigma, end 1 is sigma 0 (no lower bound).
        high = math.inf if self.start <= 0.0 else timestep_at(self.start)
        low = -math.inf if self.end >= 1.0 else timestep_at(self.end)
        return low, high

    def is_active(self, timestep, hidden_states=None):
        """True/False for a Python number; for a tensor a 0-d bool tensor on its device, never read back
        on the host (no device sync, no graph break), which the hooks apply with ``torch.where``."""
        if timestep is None:
            return True
        low, high = self.timestep_bounds(hidden_states)
        if not torch.is_tensor(timestep):
            return low <= float(timestep) <= high
        first = timestep.reshape(-1)[0]  # pipelines give the whole batch one timestep
        return (first >= low) & (first <= high)
