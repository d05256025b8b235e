"""The InvokeAI node: InvokeAI's SD1.5/SDXL denoise with Skip Tuning on its U-Net.

A subclass of the core ``denoise_latents`` node with all of its inputs (same names, so a workflow swaps it in
edge for edge) plus the Skip Tuning inputs. It reaches the live U-Net on both of the core node's paths:

* default: the core node loads and patches the U-Net (FreeU, seamless, LoRA) and then calls
  ``self.create_pipeline(unet, scheduler)`` inside that context; the override tunes that U-Net with that
  scheduler.
* ``USE_MODULAR_DENOISE``: ``create_pipeline`` is not called; an extension added to the local
  ``ExtensionsManager`` (through ``parse_t2i_adapter_field``, the overridable call that receives it) reads the
  scheduler from the denoise context and tunes the U-Net in ``patch_unet``, as FreeU's extension patches it.

The U-Net is the model cache's shared module, so the hooks are removed when the invocation ends, whatever
the outcome (success, error, cancel).
"""

# No ``from __future__ import annotations``: InvokeAI reads ``invoke``'s return annotation as a class.
from contextlib import contextmanager
from typing import Optional

from invokeai.app.invocations.baseinvocation import Classification, invocation
from invokeai.app.invocations.denoise_latents import DenoiseLatentsInvocation
from invokeai.app.invocations.fields import InputField
from invokeai.app.invocations.primitives import LatentsOutput
from invokeai.app.services.shared.invocation_context import InvocationContext
from invokeai.backend.stable_diffusion.extensions.base import ExtensionBase
from pydantic import PrivateAttr, field_validator, model_validator

from .. import RHO_MAX, RHO_MIN
from .tuning import InvocationTuning, check_base, check_rho_per_skip, check_window, forward_messages

RHO_BOTTOM_DESCRIPTION = (
    "Skip Tuning: factor for the deepest skip connection. Lower than 1 weakens the skip and leans on the "
    "backbone (the paper uses values below 1 at low step counts); higher than 1 strengthens it. 1 = off, the "
    "default: the best value depends on the model and the sampling, so compare with the same seed. Distilled "
    "few-step models (LCM, Lightning, Hyper-SD): leave it at 1."
)
RHO_TOP_DESCRIPTION = (
    "Skip Tuning: factor for the highest-resolution skip (the first one). Skips in between get factors "
    "interpolated linearly from rho_bottom to rho_top. Usually 1."
)
RHO_PER_SKIP_DESCRIPTION = (
    "Skip Tuning, optional: one factor per long skip, comma-separated, deepest first (SD1.x/SD2.x: 12, SDXL: 9). "
    "Overrides rho_bottom and rho_top. Leave empty to interpolate."
)
START_DESCRIPTION = (
    "Skip Tuning: where in sampling tuning starts, a fraction of the noise schedule: 0 = the first step."
)
END_DESCRIPTION = (
    "Skip Tuning: where in sampling tuning ends: 1 = the last step. Outside the window the skips are left as "
    "they are."
)


class SkipTuningExt(ExtensionBase):
    """The modular denoise path's way to the U-Net: tuned while the manager's U-Net patches are in place."""

    def __init__(self, tuning: InvocationTuning):
        super().__init__()
        self._tuning = tuning
        self._scheduler = None

    @contextmanager
    def patch_extension(self, ctx):
        self._scheduler = ctx.scheduler  # entered before patch_unet, with the scheduler the loop steps
        yield

    @contextmanager
    def patch_unet(self, unet, original_weights):
        with self._tuning.apply(unet, self._scheduler):
            yield


@invocation(
    "skip_tuning_denoise_latents",
    title=f"{DenoiseLatentsInvocation.UIConfig.title} + Skip Tuning",
    tags=["latents", "denoise", "txt2img", "t2i", "t2l", "img2img", "i2i", "l2l", "skip tuning", "unet"],
    category="latents",
    version="1.0.0",
    classification=Classification.Beta,
)
class SkipTuningDenoiseLatentsInvocation(DenoiseLatentsInvocation):
    """Denoises noisy latents with Skip-Tuning (Ma et al., ICML 2024): scales the U-Net's long skip connections,
    the deepest by rho_bottom, the highest-resolution by rho_top, those between linearly interpolated.
    Training-free, no extra cost per step; aimed at better images at low step counts. SD1.x, SD2.x, SDXL."""

    rho_bottom: float = InputField(default=1.0, ge=RHO_MIN, le=RHO_MAX, description=RHO_BOTTOM_DESCRIPTION,
                                   title="Skip Tuning: rho bottom")
    rho_top: float = InputField(default=1.0, ge=RHO_MIN, le=RHO_MAX, description=RHO_TOP_DESCRIPTION,
                                title="Skip Tuning: rho top")
    rho_per_skip: str = InputField(default="", description=RHO_PER_SKIP_DESCRIPTION,
                                   title="Skip Tuning: rho per skip")
    skip_tuning_start: float = InputField(default=0.0, ge=0, le=1, description=START_DESCRIPTION,
                                          title="Skip Tuning: start")
    skip_tuning_end: float = InputField(default=1.0, ge=0, le=1, description=END_DESCRIPTION,
                                        title="Skip Tuning: end")

    _tuning: Optional[InvocationTuning] = PrivateAttr(default=None)

    @field_validator("rho_per_skip")
    @classmethod
    def valid_rho_per_skip(cls, value: str) -> str:
        return check_rho_per_skip(value)

    @model_validator(mode="after")
    def valid_skip_tuning_window(self):
        check_window(self.skip_tuning_start, self.skip_tuning_end)
        return self

    def invoke(self, context: InvocationContext) -> LatentsOutput:
        check_base(self.unet.unet.base)
        tuning = InvocationTuning(self.rho_bottom, self.rho_top, self.rho_per_skip, self.skip_tuning_start,
                                  self.skip_tuning_end)
        self._tuning = tuning
        try:
            with forward_messages(context.logger), tuning:
                output = super().invoke(context)
        finally:
            self._tuning = None
        if not tuning.reached:
            context.logger.warning("Skip Tuning: this InvokeAI's denoise did not hand over its U-Net; the image "
                                   "is untuned (the node supports InvokeAI 6.14's denoise paths)")
        return output

    def create_pipeline(self, unet, scheduler):
        pipeline = super().create_pipeline(unet, scheduler)
        self._tuning.apply(unet, scheduler)
        return pipeline

    def parse_t2i_adapter_field(self, exit_stack, context, t2i_adapters, ext_manager, bgr_mode=False) -> None:
        super().parse_t2i_adapter_field(exit_stack, context, t2i_adapters, ext_manager, bgr_mode)
        ext_manager.add_extension(SkipTuningExt(self._tuning))
