"""Skip Tuning for diffusers: scale a U-Net's or U-ViT's long skips, or (experimental) a Flux/SD3
transformer's per-block residuals, on a pipeline or a bare model. Host-free: needs torch, works on
the user's diffusers, imports no host and nothing from diffusers itself.

    from skip_tuning.diffusers import apply_skip_tuning
    with apply_skip_tuning(pipe, rho_bottom=0.8):
        image = pipe(prompt).images[0]

See docs/diffusers.md.
"""

from .. import SkipTuningError
from .tuning import TuningHandle, apply_residual_tuning, apply_skip_tuning

__all__ = ["SkipTuningError", "TuningHandle", "apply_residual_tuning", "apply_skip_tuning"]
