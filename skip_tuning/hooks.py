"""Forward pre-hooks that scale the skip half of each decoder block's input.

For U-Nets whose decoder blocks are called as modules (A1111's ldm/sgm loop, and
any plain ``UNetModel`` driven outside a host): the block input is
``cat([h, skip], dim=1)``, so the skip is the trailing ``skip_channels[i]`` channels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Callable

import torch

from .unet import output_block_input_widths, skip_channel_plan

logger = logging.getLogger("skip_tuning")


class SkipScalingHooks:
    """Installs the hooks on ``diffusion_model.output_blocks``; use as a context manager.

    ``is_active`` (optional, no arguments) is asked once per block call, so a host can
    restrict tuning to part of sampling. Installing twice is a no-op.
    """

    def __init__(
        self,
        diffusion_model: torch.nn.Module,
        rhos: Sequence[float],
        is_active: Callable[[], bool] | None = None,
    ):
        self.skip_channels = skip_channel_plan(diffusion_model)
        if len(rhos) != len(self.skip_channels):
            raise ValueError(f"{len(rhos)} factors for a model with {len(self.skip_channels)} long skips")
        self.rhos = tuple(float(rho) for rho in rhos)
        self.expected_widths = output_block_input_widths(diffusion_model)
        self.output_blocks = diffusion_model.output_blocks
        self.is_active = is_active
        self.handles: list = []
        self._warned = False

    @property
    def installed(self) -> bool:
        return bool(self.handles)

    def install(self) -> SkipScalingHooks:
        if not self.handles:
            for index, block in enumerate(self.output_blocks):
                if self.rhos[index] != 1.0:
                    self.handles.append(block.register_forward_pre_hook(self._hook_for(index)))
        return self

    def remove(self) -> None:
        while self.handles:
            self.handles.pop().remove()

    def __enter__(self) -> SkipScalingHooks:
        return self.install()

    def __exit__(self, *exc_info) -> None:
        self.remove()

    def _hook_for(self, index: int):
        rho = self.rhos[index]
        skip_width = self.skip_channels[index]
        expected_width = self.expected_widths[index]

        def scale_skip(module, args):
            x = args[0]
            width = x.shape[1]
            if width <= skip_width or (expected_width is not None and width != expected_width):
                self._warn_once(index, width, skip_width, expected_width)
                return None
            if self.is_active is not None and not self.is_active():
                return None
            backbone, skip = x.split([width - skip_width, skip_width], dim=1)
            return (torch.cat([backbone, skip * rho], dim=1), *args[1:])

        return scale_skip

    def _warn_once(self, index, width, skip_width, expected_width):
        if not self._warned:
            self._warned = True
            logger.warning(
                "Skip Tuning: output block %d got %d input channels (expected %s with a %d-channel skip); "
                "this U-Net is wired differently, so its skips are left unscaled",
                index, width, expected_width, skip_width,
            )
