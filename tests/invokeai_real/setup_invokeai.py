"""Builds what the real InvokeAI tier (tests/test_invokeai_real.py) needs.

    python3.11 tests/invokeai_real/setup_invokeai.py venv [DIR]    # InvokeAI 6.14.2 from PyPI in DIR
    DIR/bin/python tests/invokeai_real/setup_invokeai.py model OUT  # a tiny random-weight SD1 diffusers folder

``venv``: a virtual environment of its own (default: .venv-invokeai in the repository root), torch pinned first
so pip keeps it, then InvokeAI, with starlette held below 1.8 (see PINS). ``model``: run with the venv's Python
(it needs diffusers and transformers). The folder passes InvokeAI's importer as an SD1 main model
(``model_index.json`` says StableDiffusionPipeline, the U-Net has cross_attention_dim 768 and 4 input channels)
and needs no network: SD1's block layout (12 long skips) with narrow channels, a 2-layer CLIP text encoder of
width 768 over a byte-level vocabulary of 514 tokens (so the tokenizer loads from the folder alone), a 4-level
VAE (8x downscale) with 8 channels. ``extras``: beside the SD1 folder, what composes with it and an SDXL model
(see ``build_extras``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
INVOKEAI_VERSION = "6.14.2"
TORCH = ("torch==2.14.1", "torchvision==0.29.1")  # the project's pinned torch; InvokeAI 6.14.2 takes 2.7 to 3.0
# InvokeAI 6.14.2 asks for any starlette >= 0.46. From starlette 1.8 its gzip middleware drops the start of an
# uncompressed response, so the UI's socket.io connection fails (HTTP 500) and its Invoke button stays disabled.
PINS = (*TORCH, "starlette<1.8")
DEFAULT_VENV = REPO_ROOT / ".venv-invokeai"


def build_venv(venv: Path) -> None:
    if sys.version_info[:2] not in ((3, 11), (3, 12)):
        sys.exit(f"InvokeAI {INVOKEAI_VERSION} needs Python 3.11 or 3.12; this is {sys.version.split()[0]}")
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    installed = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('invokeai'))"],
                               capture_output=True, text=True).stdout.strip()
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    if installed == INVOKEAI_VERSION:
        print(f"InvokeAI {installed} is already in {venv}")
    else:
        subprocess.run([*pip, *TORCH], check=True)
        subprocess.run([*pip, f"invokeai=={INVOKEAI_VERSION}", *PINS], check=True)
    subprocess.run([*pip, *PINS], check=True)  # also for a venv built before the pins


def byte_symbols() -> list:
    """The 256 printable characters byte-level BPE (GPT-2, CLIP) stands for the bytes 0-255."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = iter(range(256, 512))
    return [chr(byte if byte in printable else next(extra)) for byte in range(256)]


def byte_level_vocabulary() -> dict:
    """CLIP's tokenizer over single bytes only: every byte, every byte ending a word, and the two specials."""
    symbols = byte_symbols()
    tokens = symbols + [symbol + "</w>" for symbol in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}


def tiny_text_config(vocabulary: dict, width: int):
    """A 2-layer CLIP text encoder of ``width`` over the byte-level vocabulary."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=len(vocabulary), hidden_size=width, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=width // 64, max_position_embeddings=77, projection_dim=width,
                          bos_token_id=vocabulary["<|startoftext|>"], eos_token_id=vocabulary["<|endoftext|>"],
                          pad_token_id=1)


def tiny_vae(**config):
    """A 4-level VAE (8x downscale) with 8 channels."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        **config)


def build_model(out: Path) -> None:
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    vocabulary = byte_level_vocabulary()
    tokenizer = CLIPTokenizer(vocab=vocabulary, merges=[], model_max_length=77)
    text_encoder = CLIPTextModel(tiny_text_config(vocabulary, 768))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=8)
    vae = tiny_vae()
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    pipeline = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipeline.save_pretrained(str(out))


EXTRAS = {"sdxl": "tiny-sdxl", "controlnet": "tiny-controlnet", "t2i_adapter": "tiny-t2i-adapter",
          "lora": "tiny-lora.safetensors"}  # what ``extras`` writes into its folder


def build_sdxl(out: Path) -> None:
    """A tiny random-weight SDXL folder that InvokeAI's importer takes as SDXL (``StableDiffusionXLPipeline``, a
    U-Net with cross_attention_dim 2048 and 4 input channels): SDXL's block layout (3 levels, 9 long skips, the
    "text_time" added conditioning) with narrow channels; the two text encoders keep SDXL's widths, 768 and 1280,
    whose sum is the U-Net's 2048 and whose second one is also the pooled width (InvokeAI pools an empty prompt to
    zeros of the encoder's hidden size, a prompt to its projection: both must be the 1280 the U-Net expects),
    with 2 layers over the byte-level vocabulary."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(0)
    vocabulary = byte_level_vocabulary()
    pooled_width, time_width = 1280, 8
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=2048,
        attention_head_dim=(2, 4, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=time_width, projection_class_embeddings_input_dim=pooled_width + 6 * time_width,
        norm_num_groups=8)
    vae = tiny_vae(scaling_factor=0.13025)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")
    pipeline = StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(tiny_text_config(vocabulary, 768)),
        text_encoder_2=CLIPTextModelWithProjection(tiny_text_config(vocabulary, pooled_width)),
        tokenizer=CLIPTokenizer(vocab=vocabulary, merges=[], model_max_length=77),
        tokenizer_2=CLIPTokenizer(vocab=vocabulary, merges=[], model_max_length=77), unet=unet, scheduler=scheduler)
    pipeline.save_pretrained(str(out))


def build_extras(sd1: Path, out: Path) -> None:
    """Beside the tiny SD1 folder: a ControlNet made from its U-Net (``ControlNetModel.from_unet``; its zero
    convolutions drawn at random, or the control would add nothing), a T2I-Adapter whose four feature maps match
    that U-Net's four levels (``full_adapter``, channels 32, 32, 64, 64, 64x total downscale), a LoRA in kohya's
    format on the cross-attention keys and values of that U-Net (the importer reads SD1 from their 768 inputs),
    and the SDXL folder (``build_sdxl``)."""
    import torch
    from diffusers import ControlNetModel, T2IAdapter, UNet2DConditionModel
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1)
    unet = UNet2DConditionModel.from_pretrained(str(sd1 / "unet"))
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16, 32))
    for zero in (*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                 controlnet.controlnet_cond_embedding.conv_out):
        torch.nn.init.normal_(zero.weight, std=0.05)
    controlnet.save_pretrained(str(out / EXTRAS["controlnet"]))
    T2IAdapter(in_channels=3, channels=[32, 32, 64, 64], num_res_blocks=1, downscale_factor=8,
               adapter_type="full_adapter").save_pretrained(str(out / EXTRAS["t2i_adapter"]))
    rank, lora = 4, {}
    for name, module in unet.named_modules():
        if name.endswith(("attn2.to_k", "attn2.to_v")):
            key = "lora_unet_" + name.replace(".", "_")
            lora[f"{key}.lora_down.weight"] = torch.randn(rank, module.in_features) * 0.1
            lora[f"{key}.lora_up.weight"] = torch.randn(module.out_features, rank) * 0.1
            lora[f"{key}.alpha"] = torch.tensor(float(rank))
    save_file(lora, str(out / EXTRAS["lora"]))
    build_sdxl(out / EXTRAS["sdxl"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    venv = commands.add_parser("venv", help="InvokeAI in its own virtual environment")
    venv.add_argument("dir", nargs="?", type=Path, default=DEFAULT_VENV)
    model = commands.add_parser("model", help="the tiny SD1 diffusers folder (run with the venv's Python)")
    model.add_argument("out", type=Path)
    extras = commands.add_parser("extras", help="a tiny SDXL folder and a ControlNet, T2I-Adapter and LoRA for the "
                                                "tiny SD1 folder (run with the venv's Python)")
    extras.add_argument("sd1", type=Path, help="the SD1 folder built by `model`")
    extras.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.command == "venv":
        build_venv(args.dir)
    elif args.command == "model":
        build_model(args.out)
    else:
        build_extras(args.sd1, args.out)


if __name__ == "__main__":
    main()
