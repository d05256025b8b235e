"""The demo DiT: ComfyUI's own Flux class, scaled down, on the demo U-Net's latents.

A DiT has no long skips, only per-block residuals (``x + gate * F(x)`` inside every block),
which is what the Residual Tuning experiment scales. Trained as Flux is, by rectified flow:
``x_t = (1 - t) x_0 + t * noise`` with ``t`` drawn logit-normally, the network predicting the
velocity ``noise - x_0``; ComfyUI samples it as a FLUX-type model (``denoised = x - sigma * v``)
with the time shift 1 (the latents are 16 x 16, far below the resolutions Flux shifts for).

The class table gives the text tokens; their mean is the pooled vector Flux adds to the
timestep embedding. Needs a ComfyUI source tree (:mod:`skip_tuning_demo.comfy_import`).
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import nn

from .comfy_import import import_comfy
from .model import CONTEXT_DIM, CONTEXT_KEY, CONTEXT_TOKENS, LATENT_CHANNELS, NUM_CLASSES
from .uvit import TorchOps, load_network, xavier_linears_

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
DIT_WEIGHTS = os.path.join(WEIGHTS_DIR, "fashion_dit.safetensors")
DIT_CONTEXT_WEIGHTS = os.path.join(WEIGHTS_DIR, "fashion_dit_class_context.safetensors")
DIT_CONFIG_PATH = os.path.join(WEIGHTS_DIR, "fashion_dit.json")

#: kwargs of ComfyUI's ``comfy.ldm.flux.model.Flux``: 4 double-stream and 8 single-stream blocks
#: (Flux.1: 19 and 38), 64 image tokens of 2 x 2 patches.
DIT_KWARGS: dict[str, Any] = {
    "in_channels": LATENT_CHANNELS,
    "out_channels": LATENT_CHANNELS,
    "vec_in_dim": CONTEXT_DIM,
    "context_in_dim": CONTEXT_DIM,
    "hidden_size": 96,
    "mlp_ratio": 4.0,
    "num_heads": 3,
    "depth": 4,
    "depth_single_blocks": 8,
    "axes_dim": [8, 12, 12],
    "theta": 10000,
    "patch_size": 2,
    "qkv_bias": True,
    "guidance_embed": False,
}

#: How the training draws t: logit-normal (SD3's default), mean 0, std 1.
FLOW_SCHEDULE: dict[str, Any] = {"prediction_type": "flow_velocity", "t_sampling": "logit_normal",
                                 "logit_mean": 0.0, "logit_std": 1.0, "shift": 1.0}


class _InputCopyingLayerNorm(nn.LayerNorm):
    """ComfyUI's Flux blocks add to the residual stream in place (``txt += ...``, ``x += ...``) right
    after normalising it, which autograd refuses; normalising a copy keeps the saved input intact.
    Same parameters and outputs as ``nn.LayerNorm``: only training uses it."""

    def forward(self, x):
        return super().forward(x.clone())


class TrainingOps(TorchOps):
    LayerNorm = _InputCopyingLayerNorm


def default_config() -> dict[str, Any]:
    return {
        "name": "skip-tuning-demo fashion-mnist dit (ComfyUI Flux, scaled down)",
        "architecture": "comfy.ldm.flux.model.Flux",
        "dit_kwargs": copy.deepcopy(DIT_KWARGS),
        "schedule": dict(FLOW_SCHEDULE),
        "conditioning": {
            "type": "class_table_tokens_and_their_mean_as_pooled_vector",
            "context_key": CONTEXT_KEY,
            "context_file": os.path.basename(DIT_CONTEXT_WEIGHTS),
            "num_classes": NUM_CLASSES,
            "null_index": NUM_CLASSES,
            "context_tokens": CONTEXT_TOKENS,
            "context_dim": CONTEXT_DIM,
        },
        "weights_file": os.path.basename(DIT_WEIGHTS),
    }


def build_dit(dit_kwargs: dict[str, Any] | None = None, operations=None, dtype=None) -> nn.Module:
    """An untrained Flux; ``operations`` defaults to :class:`TrainingOps` (initialised, trainable)."""
    import_comfy()
    import dataclasses

    from comfy.ldm.flux.model import Flux, FluxParams

    kwargs = dict(DIT_KWARGS if dit_kwargs is None else dit_kwargs)
    if "txt_ids_dims" in {field.name for field in dataclasses.fields(FluxParams)}:
        kwargs.setdefault("txt_ids_dims", [])  # required since ComfyUI 0.33 (2026); Flux.1 has none
    return Flux(**kwargs, operations=operations or TrainingOps, dtype=dtype)


@torch.no_grad()
def init_dit_(net: nn.Module, seed: int = 0) -> None:
    """DiT's initialisation: Xavier linears, zeroed modulations and output layer (blocks start as identity)."""
    xavier_linears_(net, torch.Generator().manual_seed(seed))
    for name, param in net.named_parameters():
        if name.endswith("norm.scale"):  # Flux's own RMSNorm (q/k norms) leaves its scale uninitialised
            param.fill_(1.0)
    for name, module in net.named_modules():
        if name.endswith("_mod.lin") or name.endswith("modulation.lin") or name == "final_layer.adaLN_modulation.1":
            module.weight.zero_()
            module.bias.zero_()
    net.final_layer.linear.weight.zero_()
    net.final_layer.linear.bias.zero_()


def dit_forward(net: nn.Module, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                transformer_options: dict | None = None) -> torch.Tensor:
    """Velocity for latents ``x`` at times ``t`` (0 = data, 1 = noise) given class context ``[B, L, D]``."""
    return net(x, t, context, y=context.mean(dim=1), transformer_options=transformer_options or {})


def load_dit_model(device="cpu", dtype=torch.float32, weights_dir: str | None = None):
    """``(Flux in eval mode, class table [11, L, D], config)`` from the trained weights."""
    return load_network(DIT_CONFIG_PATH, "dit_kwargs", build_dit, device, dtype, weights_dir)
