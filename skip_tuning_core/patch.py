"""The output-block patch shared by ComfyUI and Forge.

Both hosts call ``patch(h, hsp, transformer_options) -> (h, hsp)`` right before
``cat([h, hsp], dim=1)`` with ``transformer_options["block"] == ("output", i)``.
The patch is a closure over plain floats: ``ModelPatcher.clone()`` deep-copies
callable objects but keeps functions, and offloading never touches floats.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable

import torch

# Where the ControlNet snapshot wrapper leaves the residuals the host is about to add to the skips.
CONTROL_OUTPUTS_KEY = "skip_tuning_control_outputs"

OutputBlockPatch = Callable[[torch.Tensor, torch.Tensor, dict], tuple]


def make_output_block_patch(
    rhos: Sequence[float],
    sigma_range: tuple[float, float] | None = None,
    scale_control: bool = True,
) -> OutputBlockPatch:
    """Build the patch that multiplies the skip of output block ``i`` by ``rhos[i]``.

    ``sigma_range`` = (sigma_low, sigma_high): outside it the skip is left alone.
    The gate is a tensor comparison and a ``torch.where``, so torch.compile sees no
    Python branch on sigma, and the factor stays a Python float: the product is the
    same bits as ``hsp * rho`` in every dtype, on every device.
    ``scale_control=False`` keeps ControlNet's residual (already added by the host)
    at full strength; it needs ``control_snapshot_wrapper`` registered on the model.
    """
    factors = tuple(float(rho) for rho in rhos)
    n_skips = len(factors)
    window = None if sigma_range is None else (float(sigma_range[0]), float(sigma_range[1]))

    def skip_tuning_output_block_patch(h, hsp, transformer_options):
        block = transformer_options.get("block")
        if not block or block[0] != "output" or not 0 <= block[1] < n_skips:
            return h, hsp
        index = block[1]
        rho = factors[index]
        if rho == 1.0:
            return h, hsp

        control = None
        if not scale_control:
            residuals = transformer_options.get(CONTROL_OUTPUTS_KEY)
            if residuals and index < len(residuals):
                # The host pops residuals from the end, so block i received residuals[-1 - i].
                control = residuals[len(residuals) - 1 - index]
                if control is not None and control.shape != hsp.shape:
                    control = None  # the host could not add it either (it only warns)

        # Out of place: hsp may be the very tensor h (U-Nets without a middle block),
        # and other patches may still hold it.
        scaled = hsp * rho
        if control is not None:
            # hsp already holds skip + residual: rho * (skip + residual) + (1 - rho) * residual.
            scaled = scaled + control.to(hsp.dtype) * (1.0 - rho)

        sigmas = transformer_options.get("sigmas") if window is not None else None
        if sigmas is not None:
            sigma = sigmas.reshape(-1)[0]
            active = (sigma >= window[0]) & (sigma <= window[1])
            scaled = torch.where(active, scaled, hsp)
        return h, scaled

    return skip_tuning_output_block_patch


def control_snapshot_wrapper(executor, x, timesteps, context, y, control, transformer_options, *args, **kwargs):
    """Diffusion-model wrapper that records ControlNet's output residuals for the patch.

    ComfyUI adds each residual to its skip in place and pops it before output patches run,
    so the list is copied (references only) before the forward pass begins, and dropped after.
    """
    residuals = control.get("output") if isinstance(control, dict) else None
    transformer_options[CONTROL_OUTPUTS_KEY] = list(residuals) if residuals else None
    try:
        return executor(x, timesteps, context, y, control, transformer_options, *args, **kwargs)
    finally:
        transformer_options.pop(CONTROL_OUTPUTS_KEY, None)
