"""Small ldm U-Nets (the Stability-AI code A1111 runs, from PyPI's stable-diffusion-sdkit) and probes.

``tiny_unet("sd1" | "sd2")`` keeps the real block structure (4 levels x 2 res blocks = 12 long
skips; SD1: heads by count and conv projections, SD2: heads by width and linear projections)
with 32/64/128 channels, every weight drawn from a seeded generator (ldm zero-initialises
output convolutions, which would hide changes to the skips).
"""

from __future__ import annotations

import math

import torch

CONTEXT_DIM = 16

FULL_SIZE = {  # the checkpoints' unet_config (A1111's configs/v1-inference.yaml, v2-inference-v.yaml)
    "sd15": dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
                 num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8, use_spatial_transformer=True,
                 transformer_depth=1, context_dim=768, legacy=False),
    "sd21": dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
                 num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_head_channels=64, use_spatial_transformer=True,
                 use_linear_in_transformer=True, transformer_depth=1, context_dim=1024, legacy=False),
}

TINY = {
    "sd1": dict(image_size=8, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[4, 2, 1],
                num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8, use_spatial_transformer=True,
                transformer_depth=1, context_dim=CONTEXT_DIM, legacy=False),
    "six": dict(image_size=8, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[2],
                num_res_blocks=1, channel_mult=[1, 2, 2], num_heads=4, use_spatial_transformer=True,
                transformer_depth=1, context_dim=CONTEXT_DIM, legacy=False),  # 6 long skips (another checkpoint)
    "sd2": dict(image_size=8, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[4, 2, 1],
                num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_head_channels=16, use_spatial_transformer=True,
                use_linear_in_transformer=True, transformer_depth=1, context_dim=CONTEXT_DIM, legacy=False),
}


def unet_class():
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    return UNetModel


def seeded_init(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.ndim >= 2:
                value = noise / math.sqrt(param[0].numel())
            elif name.endswith("weight"):
                value = 1.0 + 0.1 * noise
            else:
                value = 0.1 * noise
            param.copy_(value)


def tiny_unet(kind: str = "sd1", seed: int = 0) -> torch.nn.Module:
    model = unet_class()(**TINY[kind])
    seeded_init(model, seed)
    return model.eval()


def inputs(batch: int = 2, size: int = 8, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, size, size, generator=generator)
    t = torch.tensor([999.0, 500.0][:batch] + [250.0] * max(0, batch - 2))
    context = torch.randn(batch, 3, CONTEXT_DIM, generator=generator)
    return x, t, context


def reference_forward(unet, x, timesteps, context, rhos):
    """ldm's UNetModel.forward written out, each skip multiplied by its rho before the concatenation."""
    from ldm.modules.diffusionmodules.util import timestep_embedding

    emb = unet.time_embed(timestep_embedding(timesteps, unet.model_channels, repeat_only=False))
    hs = []
    h = x.type(unet.dtype)
    for module in unet.input_blocks:
        h = module(h, emb, context)
        hs.append(h)
    h = unet.middle_block(h, emb, context)
    for index, module in enumerate(unet.output_blocks):
        skip = hs.pop()
        # Scale in the dtype the concatenation produces (what the skip becomes inside cat).
        skip = skip.to(torch.result_type(h, skip)) * rhos[index]
        h = torch.cat([h, skip], dim=1)
        h = module(h, emb, context)
    return unet.out(h.type(x.dtype))


def hook_count(unet, probe=None) -> int:
    """Forward pre-hooks on the output blocks, not counting a SkipProbe's own."""
    total = sum(len(block._forward_pre_hooks) for block in unet.output_blocks)
    return total - (len(unet.output_blocks) if probe is not None and probe.handles else 0)


class SkipProbe:
    """Records, for every output-block call, by what factor the skip channels were scaled.

    Registered before Skip Tuning's hooks: its pre-hook sees the unscaled input, its forward hook
    the input as the block received it. ``tag`` (optional callable) is recorded with each call.
    """

    def __init__(self, unet, skip_channels, tag=None):
        self.skip_channels = skip_channels
        self.tag = tag
        self.records = []
        self._before = {}
        self.handles = []
        for index, block in enumerate(unet.output_blocks):
            self.handles.append(block.register_forward_pre_hook(self._pre(index)))
            self.handles.append(block.register_forward_hook(self._post(index)))

    def _pre(self, index):
        def hook(module, args):
            self._before[index] = args[0].detach().clone()

        return hook

    def _post(self, index):
        def hook(module, args, output):
            before, after = self._before.pop(index), args[0].detach()
            width = self.skip_channels[index]
            skip_before, skip_after = before[:, -width:], after[:, -width:]
            if torch.equal(skip_after, skip_before):
                factor = 1.0
            else:
                factor = float((skip_after.double() * skip_before.double()).sum() / skip_before.double().pow(2).sum())
            backbone_untouched = torch.equal(before[:, :-width], after[:, :-width])
            self.records.append({"block": index, "factor": factor, "backbone_untouched": backbone_untouched,
                                 "tag": self.tag() if self.tag else None})

        return hook

    def remove(self):
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
