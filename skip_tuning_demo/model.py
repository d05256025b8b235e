"""Loader and helpers for the small Fashion-MNIST demo diffusion model.

The demo model is a tiny class-conditional, Stable-Diffusion-like latent
diffusion model:

* The "latent" is a lossless space-to-depth packing of the 32x32 grey image
  (Fashion-MNIST padded from 28x28 to 32x32 and scaled to [-1, 1]) by a factor
  of 2, giving a 4 x 16 x 16 tensor (``torch.nn.functional.pixel_unshuffle``).
  Decoding is ``pixel_shuffle``.  This makes the latent 4-channel like SD's, so
  4-channel latent tooling (e.g. ComfyUI's empty-latent nodes) works with it;
  no VAE is involved and no latent scale factor is applied.
* The network is the ldm ``UNetModel`` (the same module layout and state-dict
  keys as ComfyUI's and A1111's copies) with SD1.5-like structure:
  4 resolution levels, 2 res blocks per level, hence 12 output (decoder) blocks
  with 12 long skip connections, and SpatialTransformer cross-attention.
* Conditioning is cross-attention on a learned class "prompt" table of shape
  ``[11, L, context_dim]``: rows 0-9 are the Fashion-MNIST classes and row 10
  is a learned null context (the "empty prompt" used for classifier-free
  guidance / as a negative prompt).
* The model predicts epsilon with SD's discrete schedule: scaled-linear betas
  from 0.00085 to 0.012 over 1000 steps.

This package is a demo / benchmark aid only; the extension never imports it.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
UNET_WEIGHTS = os.path.join(WEIGHTS_DIR, "fashion_unet.safetensors")
CONTEXT_WEIGHTS = os.path.join(WEIGHTS_DIR, "fashion_class_context.safetensors")
CONFIG_PATH = os.path.join(WEIGHTS_DIR, "fashion_unet.json")
#: A second U-Net of the same kind (width 96, seed 1, the same recipe), to check that findings
#: hold beyond one model; the same file names in its own folder.
WIDE_UNET_DIR = os.path.join(WEIGHTS_DIR, "wide_unet")
#: A few-step student of the bundled U-Net by latent consistency distillation (an LCM model).
LCM_UNET_DIR = os.path.join(WEIGHTS_DIR, "lcm_unet")

#: Key of the class context table inside ``fashion_class_context.safetensors``.
CONTEXT_KEY = "class_context_table"

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
#: Row of the context table that holds the learned null ("empty prompt") context.
NULL_INDEX = NUM_CLASSES

IMAGE_SIZE = 32
PACK_FACTOR = 2
LATENT_CHANNELS = PACK_FACTOR * PACK_FACTOR
LATENT_SIZE = IMAGE_SIZE // PACK_FACTOR

CONTEXT_DIM = 64
CONTEXT_TOKENS = 4

#: kwargs of ldm ``UNetModel`` used by the demo model.
UNET_KWARGS: dict[str, Any] = {
    "image_size": LATENT_SIZE,
    "in_channels": LATENT_CHANNELS,
    "out_channels": LATENT_CHANNELS,
    # 64, not 32: ldm's GroupNorm has 32 groups, and with one channel per group every
    # norm (the last one before conv_out included) erases each channel's spatial mean.
    # The eps output then cannot follow the noise's per-channel mean, an error that
    # 1/sqrt(alpha_bar) amplifies at high noise into per-image offsets between the packed
    # sub-pixels, which sampling keeps as a 2-pixel stripe/dot pattern.
    "model_channels": 64,
    "num_res_blocks": 2,
    # ds factors with a SpatialTransformer (the middle block always has one).
    # ds=4 is the 4x4 level; 16x16 and 8x8 skip attention to keep CPU training cheap.
    "attention_resolutions": [4],
    "channel_mult": [1, 1, 1, 1],
    "num_head_channels": 32,
    "use_spatial_transformer": True,
    "transformer_depth": 1,
    "context_dim": CONTEXT_DIM,
    "use_checkpoint": False,
    "legacy": False,
}

#: The SD discrete noise schedule (diffusers' ``scaled_linear``).
SCHEDULE: dict[str, Any] = {
    "prediction_type": "epsilon",
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
}


def default_config() -> dict[str, Any]:
    """The model config as written to ``fashion_unet.json``."""
    return {
        "name": "skip-tuning-demo fashion-mnist unet",
        "unet_kwargs": copy.deepcopy(UNET_KWARGS),
        "schedule": dict(SCHEDULE),
        "latent": {
            "packing": "pixel_unshuffle",
            "factor": PACK_FACTOR,
            "image_size": IMAGE_SIZE,
            "image_channels": 1,
            "latent_channels": LATENT_CHANNELS,
            "latent_size": LATENT_SIZE,
            "image_range": [-1.0, 1.0],
            "padding": "28x28 Fashion-MNIST zero-padded (value -1) by 2 px on each side to 32x32",
            "scale_factor": 1.0,
        },
        "conditioning": {
            "type": "cross_attention_class_table",
            "context_key": CONTEXT_KEY,
            "context_file": os.path.basename(CONTEXT_WEIGHTS),
            "num_classes": NUM_CLASSES,
            "null_index": NULL_INDEX,
            "context_tokens": CONTEXT_TOKENS,
            "context_dim": CONTEXT_DIM,
        },
        "class_names": list(CLASS_NAMES),
        "weights_file": os.path.basename(UNET_WEIGHTS),
    }


def load_config(path: str | None = None) -> dict[str, Any]:
    with open(path or CONFIG_PATH, encoding="utf-8") as f:
        return json.load(f)


def build_unet(unet_kwargs: dict[str, Any] | None = None) -> torch.nn.Module:
    """Instantiate an (untrained) ldm ``UNetModel`` with the demo layout."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    kwargs = dict(UNET_KWARGS if unet_kwargs is None else unet_kwargs)
    return UNetModel(**kwargs)


def load_demo_model(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    weights_dir: str | None = None,
) -> tuple[torch.nn.Module, torch.Tensor, dict[str, Any]]:
    """Load the shipped demo model.

    Returns ``(unet, class_context_table, config)``: the ldm ``UNetModel`` in
    eval mode, the ``[11, L, context_dim]`` context table (row 10 = null
    context) and the config dict.
    """
    from safetensors.torch import load_file

    wdir = weights_dir or WEIGHTS_DIR
    config = load_config(os.path.join(wdir, os.path.basename(CONFIG_PATH)))
    unet = build_unet(config["unet_kwargs"])
    sd = load_file(os.path.join(wdir, config.get("weights_file", os.path.basename(UNET_WEIGHTS))))
    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}
    unet.load_state_dict(sd, strict=True)
    unet.to(device=device, dtype=dtype).eval()
    cond = config["conditioning"]
    ctx = load_file(os.path.join(wdir, cond.get("context_file", os.path.basename(CONTEXT_WEIGHTS))))
    table = ctx[cond.get("context_key", CONTEXT_KEY)].to(device=device, dtype=dtype)
    return unet, table, config


def pack_images(images: torch.Tensor) -> torch.Tensor:
    """``[B, 1, 32, 32]`` images in [-1, 1] -> ``[B, 4, 16, 16]`` latents."""
    return F.pixel_unshuffle(images, PACK_FACTOR)


def unpack_latents(latents: torch.Tensor) -> torch.Tensor:
    """``[B, 4, 16, 16]`` latents -> ``[B, 1, 32, 32]`` images."""
    return F.pixel_shuffle(latents, PACK_FACTOR)


def _as_label_tensor(labels: Sequence[int] | torch.Tensor, device) -> torch.Tensor:
    if not torch.is_tensor(labels):
        labels = torch.as_tensor(list(labels), dtype=torch.long)
    return labels.to(device=device, dtype=torch.long)


def context_for(labels: Sequence[int] | torch.Tensor, context_table: torch.Tensor) -> torch.Tensor:
    """Cross-attention context ``[B, L, context_dim]`` for class labels.

    A label equal to :data:`NULL_INDEX` (10) selects the null context.
    """
    idx = _as_label_tensor(labels, context_table.device)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) > NULL_INDEX):
        raise ValueError(f"labels must be in [0, {NULL_INDEX}]")
    return context_table[idx]


def null_context(batch: int, context_table: torch.Tensor) -> torch.Tensor:
    """The learned null ("empty prompt") context repeated ``batch`` times."""
    return context_table[NULL_INDEX].unsqueeze(0).expand(batch, -1, -1)


def images_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images -> uint8 in [0, 255]."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
