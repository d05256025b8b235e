"""Reading the long-skip structure of an ldm/sgm/ComfyUI ``UNetModel`` (pure torch)."""

from __future__ import annotations

from torch import nn


def count_long_skips(diffusion_model) -> int | None:
    """Number of long skips (decoder blocks that pop one), or None for models without them."""
    output_blocks = getattr(diffusion_model, "output_blocks", None)
    input_blocks = getattr(diffusion_model, "input_blocks", None)
    if not isinstance(output_blocks, nn.ModuleList) or not isinstance(input_blocks, nn.ModuleList):
        return None
    if len(output_blocks) == 0 or len(output_blocks) != len(input_blocks):
        return None
    return len(output_blocks)


def _block_out_channels(block: nn.Module) -> int:
    # Attention layers keep the width; the last layer that declares out_channels sets it.
    for layer in reversed(list(block.children()) or [block]):
        channels = getattr(layer, "out_channels", None)
        if isinstance(channels, int):
            return channels
    raise ValueError(f"cannot tell the output width of {type(block).__name__}")


def skip_channel_plan(diffusion_model) -> tuple[int, ...]:
    """Channels of the skip each output block receives, index 0 = deepest.

    Output block i concatenates the skip pushed by input block N - 1 - i after its own features.
    """
    n_skips = count_long_skips(diffusion_model)
    if n_skips is None:
        raise ValueError(f"{type(diffusion_model).__name__} has no long skips")
    widths = [_block_out_channels(block) for block in diffusion_model.input_blocks]
    return tuple(reversed(widths))


def output_block_input_widths(diffusion_model) -> tuple[int | None, ...]:
    """Width of the concatenated input each output block expects, where its first layer says."""
    widths = []
    for block in diffusion_model.output_blocks:
        first = next(iter(block.children()), None)
        channels = getattr(first, "channels", getattr(first, "in_channels", None))
        widths.append(channels if isinstance(channels, int) else None)
    return tuple(widths)
