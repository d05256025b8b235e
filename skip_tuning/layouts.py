"""Where each architecture keeps its long skips: the one place to touch for the next architecture.

A :class:`SkipLayout` says how many long skips a network has, in which order they are
numbered (index 0 = the deepest skip, ``n_skips - 1`` = the first, highest-resolution one,
which is the order ``rho_schedule`` fills), and how a factor reaches each skip:

* ``OUTPUT_BLOCK_PATCH`` (U-Nets: ldm/sgm/ComfyUI ``UNetModel``): decoder block ``i`` pops
  skip ``i``; the host's output-block patch (ComfyUI, Forge) or a forward pre-hook on
  ``output_blocks[i]`` (A1111) scales it before ``cat([h, skip], dim=1)``.
* ``DIT_REPLACE_PATCH`` (U-ViTs: transformers whose first half pushes block outputs and whose
  second half pops them): the block that consumes skip ``i`` is reached through ComfyUI's
  ``patches_replace["dit"][replace_keys[i]]``, whose ``args["skip"]`` is the skip about to be
  combined.

Nothing here imports a host; networks are recognised by their structure and class name.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .unet import count_long_skips

OUTPUT_BLOCK_PATCH = "output_block_patch"
DIT_REPLACE_PATCH = "dit_replace_patch"


@dataclass(frozen=True)
class SkipLayout:
    architecture: str  # for messages: "U-Net", "HunyuanDiT", "Hunyuan3D 2.1"
    n_skips: int
    mechanism: str  # OUTPUT_BLOCK_PATCH or DIT_REPLACE_PATCH
    # DIT_REPLACE_PATCH only: the patches_replace["dit"] key of the block that consumes skip i.
    replace_keys: tuple = ()


@dataclass(frozen=True)
class _UViTFamily:
    architecture: str
    replace_kind: str  # first element of the block's patches_replace["dit"] key


# ComfyUI's U-ViT classes. Both push the outputs of the first blocks, leave a middle block or two
# alone, and pop in every block after depth // 2, so block depth // 2 + 1 gets the deepest skip.
_U_VITS = {
    # comfy/ldm/hydit/models.py: HunyuanDiT 1.0-1.2 (depth 40: blocks 0-18 push, 21-39 pop).
    "HunYuanDiT": _UViTFamily("HunyuanDiT", "double_block"),
    # comfy/ldm/hunyuan3dv2_1/hunyuandit.py: Hunyuan3D 2.1 (depth 21: blocks 0-9 push, 11-20 pop).
    "HunYuanDiTPlain": _UViTFamily("Hunyuan3D 2.1", "block"),
}

# For tooltips and messages: the skip counts of the released models of every supported family.
KNOWN_SKIP_COUNTS = (
    "12 for SD1.x/SD2.x, 9 for SDXL, 6 for KOALA/SD-XS, 19 for HunyuanDiT, 10 for Hunyuan3D 2.1"
)


def _u_vit_layout(network) -> SkipLayout | None:
    family = _U_VITS.get(type(network).__name__)
    blocks = getattr(network, "blocks", None)
    depth = getattr(network, "depth", None)
    if family is None or not isinstance(blocks, nn.ModuleList) or not isinstance(depth, int) or depth != len(blocks):
        return None
    first_popping = depth // 2 + 1
    takes_skip = [getattr(block, "skip_linear", None) is not None for block in blocks]
    if takes_skip != [index >= first_popping for index in range(depth)] or not any(takes_skip):
        return None  # wired differently from the class this layout describes
    keys = tuple((family.replace_kind, index) for index in range(first_popping, depth))
    return SkipLayout(family.architecture, len(keys), DIT_REPLACE_PATCH, keys)


def find_skip_layout(network) -> SkipLayout | None:
    """The network's long skips, or None for networks without them (Flux, SD3, PixArt, ...)."""
    if network is None:
        return None
    n_skips = count_long_skips(network)
    if n_skips is not None:
        return SkipLayout("U-Net", n_skips, OUTPUT_BLOCK_PATCH)
    return _u_vit_layout(network)

