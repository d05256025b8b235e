"""Forge / reForge (ComfyUI-derived patcher): the core's output-block patch, the one the ComfyUI node uses, on
a clone of ``p.sd_model.forge_objects.unet``. Forge resets ``forge_objects`` before every pass, so nothing
outlives the pass; it may call ``process_before_every_sampling`` twice for one pass, so applying is idempotent.
"""

from __future__ import annotations

from typing import Callable

from .. import count_long_skips, make_output_block_patch, rho_schedule
from ..infotext import WebuiParams
from .common import NO_LONG_SKIPS, drop_infotext, progress_gate, warn

_PATCH_MARK = "skip_tuning_patch"


def unet_patcher(p):
    """Forge's (and reForge's) U-Net patcher for this pass, or None on other webuis."""
    return getattr(getattr(getattr(p, "sd_model", None), "forge_objects", None), "unet", None)


def _has_skip_tuning_patch(patcher) -> bool:
    options = getattr(patcher, "model_options", None) or {}
    patches = options.get("transformer_options", {}).get("patches", {}).get("output_block_patch", [])
    return any(getattr(patch, _PATCH_MARK, False) for patch in patches)


def _gated(patch, is_active: Callable[[], bool]):
    def skip_tuning_windowed_patch(h, hsp, transformer_options):
        if not is_active():
            return h, hsp
        return patch(h, hsp, transformer_options)

    return skip_tuning_windowed_patch


def apply(p, params: WebuiParams, patcher) -> bool:
    """Clone the patcher, add the output-block patch, assign the clone back (once per pass)."""
    diffusion_model = getattr(getattr(patcher, "model", None), "diffusion_model", None)
    n_skips = count_long_skips(diffusion_model)
    if n_skips is None:
        warn(p, NO_LONG_SKIPS)
        drop_infotext(p)
        return False
    rhos = rho_schedule(n_skips, params.rho_bottom, params.rho_top)
    if all(rho == 1.0 for rho in rhos):
        return False
    if _has_skip_tuning_patch(patcher):  # called again in the same pass
        return True
    patch = make_output_block_patch(rhos)
    if not params.whole_sampling:
        patch = _gated(patch, progress_gate(p, *params.window))
    setattr(patch, _PATCH_MARK, True)
    clone = patcher.clone()
    clone.set_model_output_block_patch(patch)
    p.sd_model.forge_objects.unet = clone
    return True
