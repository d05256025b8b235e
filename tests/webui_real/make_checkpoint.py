#!/usr/bin/env python3
"""Write a random-weight SD1.5 single-file checkpoint with the original key layout (fp16).

    python make_checkpoint.py --ldm STABLEDIFFUSION_CHECKOUT --clip-config CONFIG.json --out FILE

The U-Net and VAE are the ldm classes the original checkpoints were saved from (with SD1.5's
v1-inference.yaml parameters), the text encoder is transformers' CLIPTextModel, so every key is
where the webuis expect it. Every layer gets its default random init: ldm zero-initialises the
last layer of each block, which would make the U-Net output zero whatever its skips carry.
Runs in a webui's venv (torch, transformers, safetensors).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

# SD1.5's configs/v1-inference.yaml (the Stability-AI checkout holds only the SD2 configs).
UNET = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
            num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8, use_spatial_transformer=True,
            transformer_depth=1, context_dim=768, use_checkpoint=False, legacy=False)
VAE_EMBED_DIM = 4
VAE = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
           num_res_blocks=2, attn_resolutions=[], dropout=0.0)


def randomize(module: torch.nn.Module) -> torch.nn.Module:
    for layer in module.modules():
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    return module


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ldm", type=Path, required=True, help="a Stability-AI/stablediffusion checkout")
    parser.add_argument("--clip-config", type=Path, required=True, help="CLIP ViT-L/14 text model config.json")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    sys.path.insert(0, str(args.ldm))
    from ldm.modules.diffusionmodules.model import Decoder, Encoder
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(args.seed)
    unet = randomize(UNetModel(**UNET))
    first_stage = torch.nn.ModuleDict({
        "encoder": Encoder(**VAE),
        "decoder": Decoder(**VAE),
        "quant_conv": torch.nn.Conv2d(2 * VAE["z_channels"], 2 * VAE_EMBED_DIM, 1),
        "post_quant_conv": torch.nn.Conv2d(VAE_EMBED_DIM, VAE["z_channels"], 1),
    })
    randomize(first_stage)
    text_model = CLIPTextModel(CLIPTextConfig.from_json_file(str(args.clip_config)))

    state = {}
    for prefix, module in (("model.diffusion_model.", unet), ("first_stage_model.", first_stage),
                           ("cond_stage_model.transformer.", text_model)):
        for key, value in module.state_dict().items():
            state[prefix + key] = value.detach().to(torch.float16).contiguous()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out))
    print(f"{args.out}: {len(state)} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
