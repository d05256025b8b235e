#!/usr/bin/env python3
"""Write a random-weight SD1.5: a single-file checkpoint with the original key layout, or a diffusers folder (fp16).

    python make_checkpoint.py --ldm STABLEDIFFUSION_CHECKOUT --clip-config CONFIG.json --out FILE
    python make_checkpoint.py --diffusers-configs SDNEXT/configs/sd15 --out DIR

Single file (A1111, Forge, reForge): the U-Net and VAE are the ldm classes the original
checkpoints were saved from (with SD1.5's v1-inference.yaml parameters), the text encoder is
transformers' CLIPTextModel, so every key is where the webuis expect it. Diffusers folder
(SD.Next): UNet2DConditionModel, AutoencoderKL and CLIPTextModel built from a diffusers SD1.5
config layout (SD.Next ships one, tokenizer included), saved with ``save_pretrained`` next to the
layout's tokenizer and scheduler, without a safety checker. Every layer gets its default random
init: ldm zero-initialises the last layer of each block, which would make the U-Net output zero
whatever its skips carry. Runs in a webui's venv (torch, transformers, safetensors; diffusers for
the folder).
"""

from __future__ import annotations

import argparse
import json
import shutil
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


def write_diffusers_folder(configs: Path, out: Path) -> None:
    """A StableDiffusionPipeline folder: random U-Net, VAE and text encoder, the layout's tokenizer and scheduler."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    models = {
        "unet": randomize(UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(configs / "unet"))),
        "vae": randomize(AutoencoderKL.from_config(AutoencoderKL.load_config(configs / "vae"))),
        "text_encoder": CLIPTextModel(CLIPTextConfig.from_json_file(str(configs / "text_encoder" / "config.json"))),
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, model in models.items():
        model.to(torch.float16).save_pretrained(str(out / name), safe_serialization=True)
    for name in ("tokenizer", "scheduler"):
        shutil.copytree(configs / name, out / name, dirs_exist_ok=True)
    index = json.loads((configs / "model_index.json").read_text())
    index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    print(f"{out}: {', '.join(models)} (random), tokenizer, scheduler")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ldm", type=Path, help="a Stability-AI/stablediffusion checkout (single file)")
    parser.add_argument("--clip-config", type=Path, help="CLIP ViT-L/14 text model config.json (single file)")
    parser.add_argument("--diffusers-configs", type=Path,
                        help="a diffusers SD1.5 config layout with tokenizer: write a diffusers folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    if args.diffusers_configs is not None:
        write_diffusers_folder(args.diffusers_configs, args.out)
        return 0
    if args.ldm is None or args.clip_config is None:
        parser.error("a single file needs --ldm and --clip-config (or give --diffusers-configs)")

    sys.path.insert(0, str(args.ldm))
    from ldm.modules.diffusionmodules.model import Decoder, Encoder
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    from transformers import CLIPTextConfig, CLIPTextModel

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
