"""The demo U-ViT: ComfyUI's own HunyuanDiT class, scaled down, on the demo U-Net's latents.

Same task as :mod:`skip_tuning_demo.model`: class-conditional Fashion-MNIST on the 4 x 16 x 16
space-to-depth latents, epsilon prediction with SD's discrete schedule, classifier-free
guidance through a learned null row of the class table. Only the network differs: a
transformer whose first half pushes its outputs onto a stack and whose second half pops
them, ``skip_norm(cat([x, skip])) -> skip_linear``, exactly the block code ComfyUI runs for
HunyuanDiT, so sampling it measures the real long skips and the real replace-patch path.

The class table feeds both of HunyuanDiT's text inputs (its "CLIP" tokens and its "T5"
tokens, which the attention pooler also reads); every mask is all ones. Needs a ComfyUI
source tree (:mod:`skip_tuning_demo.comfy_import`).
"""

from __future__ import annotations

import copy
import json
import math
import os
from typing import Any

import torch
from torch import nn

from .comfy_import import import_comfy
from .model import CONTEXT_DIM, CONTEXT_KEY, CONTEXT_TOKENS, LATENT_CHANNELS, LATENT_SIZE, NUM_CLASSES, SCHEDULE

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
UVIT_WEIGHTS = os.path.join(WEIGHTS_DIR, "fashion_uvit.safetensors")
UVIT_CONTEXT_WEIGHTS = os.path.join(WEIGHTS_DIR, "fashion_uvit_class_context.safetensors")
UVIT_CONFIG_PATH = os.path.join(WEIGHTS_DIR, "fashion_uvit.json")

#: kwargs of ComfyUI's ``comfy.ldm.hydit.models.HunYuanDiT`` (3.2M parameters). depth 16: blocks 0-6 push,
#: 7 and 8 neither push nor pop, 9-15 pop, so 7 long skips (HunyuanDiT 1.x: depth 40, 19 skips).
UVIT_KWARGS: dict[str, Any] = {
    "input_size": LATENT_SIZE,
    "patch_size": 2,
    "in_channels": LATENT_CHANNELS,
    "hidden_size": 96,
    "depth": 16,
    "num_heads": 3,
    "mlp_ratio": 4.0,
    "text_states_dim": CONTEXT_DIM,
    "text_states_dim_t5": CONTEXT_DIM,
    "text_len": CONTEXT_TOKENS,
    "text_len_t5": CONTEXT_TOKENS,
    "qk_norm": True,
    "size_cond": False,
    "use_style_cond": False,
    "learn_sigma": False,
    "norm": "layer",
}


class TorchOps:
    """``operations`` for ComfyUI model classes made of plain torch layers, which initialise their weights.

    ComfyUI's own ops skip initialisation (weights always come from a file); training needs it.
    """

    Linear = nn.Linear
    Conv2d = nn.Conv2d
    Conv3d = nn.Conv3d
    LayerNorm = nn.LayerNorm
    GroupNorm = nn.GroupNorm
    RMSNorm = nn.RMSNorm
    Embedding = nn.Embedding


def default_config() -> dict[str, Any]:
    return {
        "name": "skip-tuning-demo fashion-mnist u-vit (ComfyUI HunYuanDiT, scaled down)",
        "architecture": "comfy.ldm.hydit.models.HunYuanDiT",
        "uvit_kwargs": copy.deepcopy(UVIT_KWARGS),
        "schedule": dict(SCHEDULE),
        "conditioning": {
            "type": "class_table_as_both_text_inputs",
            "context_key": CONTEXT_KEY,
            "context_file": os.path.basename(UVIT_CONTEXT_WEIGHTS),
            "num_classes": NUM_CLASSES,
            "null_index": NUM_CLASSES,
            "context_tokens": CONTEXT_TOKENS,
            "context_dim": CONTEXT_DIM,
        },
        "weights_file": os.path.basename(UVIT_WEIGHTS),
    }


def build_uvit(uvit_kwargs: dict[str, Any] | None = None, operations=None, dtype=None) -> nn.Module:
    """An untrained HunYuanDiT; ``operations`` defaults to :class:`TorchOps` (initialised weights)."""
    import_comfy()
    from comfy.ldm.hydit.models import HunYuanDiT

    kwargs = dict(UVIT_KWARGS if uvit_kwargs is None else uvit_kwargs)
    return HunYuanDiT(**kwargs, operations=operations or TorchOps, dtype=dtype, log_fn=lambda *a: None)


@torch.no_grad()
def xavier_linears_(net: nn.Module, generator: torch.Generator) -> None:
    """Xavier-uniform weights and zero biases for every linear layer (DiT's initialisation)."""
    for module in net.modules():
        if isinstance(module, nn.Linear):
            bound = math.sqrt(6.0 / (module.in_features + module.out_features))
            module.weight.uniform_(-bound, bound, generator=generator)
            if module.bias is not None:
                module.bias.zero_()


@torch.no_grad()
def init_uvit_(net: nn.Module, seed: int = 0) -> None:
    """DiT's initialisation: Xavier linears, zeroed modulations and output layer (each block starts as identity)."""
    generator = torch.Generator().manual_seed(seed)
    xavier_linears_(net, generator)
    for name, param in net.named_parameters():
        if name in ("text_embedding_padding",) or name.endswith("positional_embedding"):
            param.normal_(0.0, 0.02, generator=generator)
    proj = net.x_embedder.proj
    bound = math.sqrt(6.0 / (proj.weight[0].numel() + proj.out_channels))
    proj.weight.uniform_(-bound, bound, generator=generator)
    proj.bias.zero_()
    for block in net.blocks:
        block.default_modulation[-1].weight.zero_()
        block.default_modulation[-1].bias.zero_()
    net.final_layer.adaLN_modulation[-1].weight.zero_()
    net.final_layer.adaLN_modulation[-1].bias.zero_()
    net.final_layer.linear.weight.zero_()
    net.final_layer.linear.bias.zero_()


def count_long_skips_of(uvit_kwargs: dict[str, Any]) -> int:
    depth = int(uvit_kwargs["depth"])
    return depth // 2 - 1


def uvit_forward(net: nn.Module, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                 transformer_options: dict | None = None) -> torch.Tensor:
    """Epsilon for latents ``x`` at timesteps ``t`` (0-999) given class context ``[B, L, D]``."""
    mask = torch.ones(context.shape[:2], dtype=torch.long, device=context.device)
    return net(
        x, t, context=context.clone(), text_embedding_mask=mask,
        encoder_hidden_states_t5=context, text_embedding_mask_t5=mask,
        transformer_options=transformer_options or {},
    )


class UViTDenoiser(nn.Module):
    """``denoiser(x, t, context=ctx)``: the calling convention of the demo samplers, with optional options.

    ``transformer_options`` is what ComfyUI would hand the network (``patches_replace`` etc.),
    so the core's replace patches can be exercised outside ComfyUI.
    """

    def __init__(self, net: nn.Module, transformer_options: dict | None = None):
        super().__init__()
        self.net = net
        self.transformer_options = transformer_options or {}

    def forward(self, x, t, context):
        return uvit_forward(self.net, x, t, context, self.transformer_options)


def load_network(config_path: str, kwargs_key: str, build, device="cpu", dtype=torch.float32,
                 weights_dir: str | None = None):
    """``(network in eval mode, class table [11, L, D], config)`` of a demo model built from ComfyUI's classes.

    ``build(kwargs, operations=...)`` makes the network with ComfyUI's own ops, as ComfyUI loads it.
    """
    from safetensors.torch import load_file

    wdir = weights_dir or WEIGHTS_DIR
    with open(os.path.join(wdir, os.path.basename(config_path)), encoding="utf-8") as f:
        config = json.load(f)
    import_comfy()
    import comfy.ops

    net = build(config[kwargs_key], operations=comfy.ops.disable_weight_init)
    state = load_file(os.path.join(wdir, config["weights_file"]))
    net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    net.to(device=device, dtype=dtype).eval()
    cond = config["conditioning"]
    table = load_file(os.path.join(wdir, cond["context_file"]))[cond["context_key"]].to(device=device, dtype=dtype)
    return net, table, config


def load_uvit_model(device="cpu", dtype=torch.float32, weights_dir: str | None = None):
    """``(HunYuanDiT in eval mode, class table [11, L, D], config)`` from the shipped weights."""
    return load_network(UVIT_CONFIG_PATH, "uvit_kwargs", build_uvit, device, dtype, weights_dir)
