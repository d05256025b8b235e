"""The pack's four ComfyUI nodes, declared with ComfyUI's V3 schema (``comfy_api.latest``).

Only ComfyUI imports this module (through the pack's ``comfy_entrypoint``; the tests once ComfyUI is
importable): it needs ``comfy_api``. The nodes do no work of their own; each calls a host-free adapter
function (``adapter``, ``compare``, ``residual``). Written against the
V3 API as ComfyUI 0.3.64 has it (the oldest release tested) and still current in 0.33.0; what later
releases added (search aliases) is used where this ComfyUI has it.

Node ids, input names, their order and defaults are what saved workflows refer to: never change them.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib

from comfy_api.latest import ComfyExtension, io

from .. import (
    DEFAULT_RHO_BOTTOM,
    DEFAULT_RHO_TOP,
    RHO_MAX,
    RHO_MIN,
    SkipTuningError,
)
from .adapter import apply_skip_tuning, check_skip_tuning_inputs
from .compare import check_sweep_inputs, sample_sweep
from .residual import (
    DEFAULT_RHO_FIRST,
    DEFAULT_RHO_LAST,
    apply_residual_tuning,
    check_residual_inputs,
)

# Where ComfyUI 0.3.64 files FreeU and KSampler; later releases moved them (0.33.0: model/patch/unet and
# model/sampling), so the nodes take their neighbours' categories from the running ComfyUI.
FREEU_CATEGORY_0_3_64 = "model_patches/unet"
KSAMPLER_CATEGORY_0_3_64 = "sampling"

SKIP_TUNING_ALIASES = ("skip connection", "long skip", "skip-tuning", "unet", "freeu", "few steps", "low steps",
                       "rho")
COMPARE_ALIASES = ("skip tuning", "compare", "grid", "xy plot", "sweep", "few steps")
RESIDUAL_ALIASES = ("residual", "skip tuning", "dit", "flux", "sd3", "few steps")

_SCHEMA_FIELDS = {field.name for field in dataclasses.fields(io.Schema)}


@functools.cache
def category_beside(module: str, node: str, fallback: str) -> str:
    """The menu category of a built-in node in this ComfyUI, so ours sit beside it; ``fallback`` where
    that node cannot be found."""
    try:
        return getattr(importlib.import_module(module), node).CATEGORY
    except (ImportError, AttributeError):
        return fallback


def unet_patch_category() -> str:
    return category_beside("comfy_extras.nodes_freelunch", "FreeU", FREEU_CATEGORY_0_3_64)


def dit_patch_category() -> str:
    """Beside the U-Net patches, in a "dit" folder of their parent (0.3.64: model_patches/dit)."""
    return unet_patch_category().rsplit("/", 1)[0] + "/dit"


def sampling_category() -> str:
    return category_beside("nodes", "KSampler", KSAMPLER_CATEGORY_0_3_64)


def schema(search_aliases: tuple, **fields) -> io.Schema:
    """``io.Schema``, with search aliases where this ComfyUI has them (added after 0.3.64)."""
    if "search_aliases" in _SCHEMA_FIELDS:
        fields["search_aliases"] = list(search_aliases)
    return io.Schema(**fields)


def validation(check, **values) -> bool | str:
    """What ComfyUI's ``validate_inputs`` returns: True, or the problem, shown on the node before anything runs.

    ComfyUI leaves the min/max check of every input named here to the node: ``check`` covers the same
    ranges (and NaN, which ComfyUI's own comparisons let through).
    """
    try:
        check(**values)
    except SkipTuningError as error:
        return str(error)
    return True


def rho_input(name: str, default: float, tooltip: str, step: float = 0.01) -> io.Float.Input:
    return io.Float.Input(name, default=default, min=RHO_MIN, max=RHO_MAX, step=step,
                          display_mode=io.NumberDisplay.slider, tooltip=tooltip)


def percent_input(name: str, default: float, tooltip: str) -> io.Float.Input:
    return io.Float.Input(name, default=default, min=0.0, max=1.0, step=0.001, tooltip=tooltip)


# Tooltips are one short sentence each (a tooltip opens over the canvas, and during a drag); the
# details are in the node help pages, js/docs/<node>/en.md.
MODEL_TOOLTIP = "The model to tune; models without long skips (Flux, SD3, ...) pass through unchanged."
RHO_BOTTOM_TOOLTIP = "Factor of the deepest skip: below 1 weakens it, 1 is off (the node's help has good values)."
RHO_TOP_TOOLTIP = "Factor of the highest-resolution skip; the skips between are interpolated."
TUNED_MODEL_TOOLTIP = "A copy of the model whose skip connections are scaled while sampling."
START_PERCENT_TOOLTIP = "Where in sampling tuning starts: 0 = the first step."
END_PERCENT_TOOLTIP = "Where in sampling tuning ends: 1 = the last step."


def model_and_rho_inputs() -> list:
    return [
        io.Model.Input("model", tooltip=MODEL_TOOLTIP),
        rho_input("rho_bottom", DEFAULT_RHO_BOTTOM, RHO_BOTTOM_TOOLTIP),
        rho_input("rho_top", DEFAULT_RHO_TOP, RHO_TOP_TOOLTIP),
    ]


class SkipTuning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            SKIP_TUNING_ALIASES,
            node_id="SkipTuning",
            display_name="Skip Tuning",
            category=unet_patch_category(),
            description="Scales a U-Net's long skip connections (Skip-Tuning, ICML 2024) for better images at "
                        "few steps.",
            inputs=model_and_rho_inputs(),
            outputs=[io.Model.Output(tooltip=TUNED_MODEL_TOOLTIP)],
        )

    @classmethod
    def validate_inputs(cls, rho_bottom=None, rho_top=None) -> bool | str:
        return validation(check_skip_tuning_inputs, rho_bottom=rho_bottom, rho_top=rho_top)

    @classmethod
    def execute(cls, model, rho_bottom, rho_top) -> io.NodeOutput:
        return io.NodeOutput(apply_skip_tuning(model, rho_bottom, rho_top))


class SkipTuningAdvanced(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            SKIP_TUNING_ALIASES + ("sampling window", "controlnet", "per skip"),
            node_id="SkipTuningAdvanced",
            display_name="Skip Tuning (Advanced)",
            category=unet_patch_category(),
            description="Skip Tuning with a sampling window, per-skip factors and a ControlNet switch.",
            inputs=[
                *model_and_rho_inputs(),
                percent_input("start_percent", 0.0, START_PERCENT_TOOLTIP),
                percent_input("end_percent", 1.0, END_PERCENT_TOOLTIP),
                io.String.Input("rho_per_skip", default="", multiline=False, optional=True, tooltip=(
                    "Optional: one factor per skip, deepest first, comma-separated; overrides rho_bottom and "
                    "rho_top.")),
                io.Boolean.Input("scale_controlnet", default=True, optional=True, tooltip=(
                    "Whether ControlNet's residuals, added to the skips, are scaled with them.")),
            ],
            outputs=[io.Model.Output(tooltip=TUNED_MODEL_TOOLTIP)],
        )

    @classmethod
    def validate_inputs(cls, rho_bottom=None, rho_top=None, start_percent=None, end_percent=None,
                        rho_per_skip=None) -> bool | str:
        return validation(check_skip_tuning_inputs, rho_bottom=rho_bottom, rho_top=rho_top,
                          start_percent=start_percent, end_percent=end_percent, rho_per_skip=rho_per_skip)

    @classmethod
    def execute(cls, model, rho_bottom, rho_top, start_percent, end_percent, rho_per_skip="",
                scale_controlnet=True) -> io.NodeOutput:
        return io.NodeOutput(apply_skip_tuning(model, rho_bottom, rho_top, start_percent, end_percent,
                                               rho_per_skip, scale_controlnet))


class SkipTuningCompare(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        import comfy.samplers

        samplers = comfy.samplers.KSampler
        return schema(
            COMPARE_ALIASES,
            node_id="SkipTuningCompare",
            display_name="Skip Tuning Compare",
            category=sampling_category(),
            description="Samples a grid of step counts by rho_bottom values with one seed, to compare settings.",
            inputs=[
                io.Model.Input("model", tooltip="The model without Skip Tuning; the node applies it per row."),
                io.Conditioning.Input("positive"),
                io.Conditioning.Input("negative"),
                io.Latent.Input("latent", tooltip="The latent to denoise (from Empty Latent Image, for example)."),
                io.Vae.Input("vae"),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="The same seed and noise for every cell."),
                io.Combo.Input("sampler_name", options=samplers.SAMPLERS, default="euler"),
                io.Combo.Input("scheduler", options=samplers.SCHEDULERS, default="normal"),
                io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01),
                io.String.Input("steps_list", default="4, 8, 16",
                                tooltip="Step counts, one grid column each, e.g. '4, 8, 16'."),
                io.String.Input("rho_bottom_list", default="1.0, 0.9, 0.8",
                                tooltip="rho_bottom values, one grid row each; 1.0 is the untuned baseline."),
                rho_input("rho_top", 1.0, "Factor of the highest-resolution skip, the same for every row."),
            ],
            # Outputs are only ever appended: saved workflows link to them by index.
            outputs=[
                io.Image.Output("grid", display_name="grid", tooltip=(
                    "Labelled grid: one row per rho_bottom, one column per step count.")),
                io.Image.Output("images", display_name="images", tooltip=(
                    "Every decoded image, row by row (rho_bottom), then column by column (steps).")),
                io.Image.Output("differences", display_name="differences", tooltip=(
                    "Each cell's amplified difference from the untuned cell of its column.")),
            ],
        )

    @classmethod
    def validate_inputs(cls, steps_list=None, rho_bottom_list=None, rho_top=None) -> bool | str:
        return validation(check_sweep_inputs, steps_list=steps_list, rho_bottom_list=rho_bottom_list,
                          rho_top=rho_top)

    @classmethod
    def execute(cls, model, positive, negative, latent, vae, seed, sampler_name, scheduler, cfg, steps_list,
                rho_bottom_list, rho_top) -> io.NodeOutput:
        return io.NodeOutput(*sample_sweep(model, positive, negative, latent, vae, seed, sampler_name, scheduler,
                                           cfg, steps_list, rho_bottom_list, rho_top))


class ResidualTuning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            RESIDUAL_ALIASES,
            node_id="ResidualTuning",
            display_name="Residual Tuning (experimental)",
            category=dit_patch_category(),
            is_experimental=True,
            description="Experimental: scales the identity path of a DiT's blocks (Flux, SD3), for few steps.",
            inputs=[
                io.Model.Input("model", tooltip="The DiT to tune (Flux.1, SD3); other models pass through unchanged."),
                rho_input("rho_first", DEFAULT_RHO_FIRST, step=0.005, tooltip=(
                    "Factor on the identity path of the first tuned block; 1 is off.")),
                rho_input("rho_last", DEFAULT_RHO_LAST, step=0.005, tooltip=(
                    "Factor on the identity path of the last block; blocks between are interpolated.")),
                io.Float.Input("start_depth", default=0.0, min=0.0, max=0.95, step=0.05, tooltip=(
                    "Fraction of the blocks, from the input side, left untouched (0 = tune all).")),
                percent_input("start_percent", 0.0, START_PERCENT_TOOLTIP),
                percent_input("end_percent", 1.0, END_PERCENT_TOOLTIP),
            ],
            outputs=[io.Model.Output(tooltip="A copy of the model whose blocks' identity paths are scaled while "
                                             "sampling.")],
        )

    @classmethod
    def validate_inputs(cls, rho_first=None, rho_last=None, start_percent=None, end_percent=None) -> bool | str:
        return validation(check_residual_inputs, rho_first=rho_first, rho_last=rho_last,
                          start_percent=start_percent, end_percent=end_percent)

    @classmethod
    def execute(cls, model, rho_first, rho_last, start_depth, start_percent, end_percent) -> io.NodeOutput:
        return io.NodeOutput(apply_residual_tuning(model, rho_first, rho_last, start_depth, start_percent,
                                                   end_percent))


NODES = [SkipTuning, SkipTuningAdvanced, SkipTuningCompare, ResidualTuning]


class SkipTuningExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
