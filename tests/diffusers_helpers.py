"""Tiny real diffusers models (built from configs, seeded, on CPU) and probes for the diffusers adapter tests.

What each U-Net skip receives is measured independently of the adapter: forward hooks record the
down path's residuals (the first down block's input, then each down block's residuals) and what every up-block
resnet concatenates; the k-th resnet call of a forward consumes skip k (up blocks are walked deepest
first and resnet j pops the tuple's last element), so its trailing channels are residual N - 1 - k.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed")

CONTEXT_DIM = 16
TEXT_TOKENS = 3


def seeded(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights from a seed (zero-initialised output layers would hide every effect)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.ndim >= 2:
                value = noise / param[0].numel() ** 0.5
            elif name.endswith("weight"):
                value = 1.0 + 0.1 * noise
            else:
                value = 0.1 * noise
            param.copy_(value.to(param.dtype))
    return model.eval()


def sd1_unet(seed: int = 0):
    """SD1.x layout (4 levels x 2 res blocks, cross-attention in the top three): 12 skips."""
    return seeded(diffusers.UNet2DConditionModel(
        sample_size=16, block_out_channels=(8, 8, 16, 16), layers_per_block=2, norm_num_groups=4,
        cross_attention_dim=CONTEXT_DIM, attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    ), seed)


POOLED_DIM = 8
TIME_IDS_DIM = 4


def sdxl_unet(seed: int = 0):
    """SDXL layout (3 levels, no attention at the top, 2 transformer layers deeper, text_time embedding): 9 skips."""
    return seeded(diffusers.UNet2DConditionModel(
        sample_size=16, block_out_channels=(8, 16, 16), layers_per_block=2, norm_num_groups=4,
        cross_attention_dim=CONTEXT_DIM, attention_head_dim=2, transformer_layers_per_block=(1, 2, 2),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=TIME_IDS_DIM,
        projection_class_embeddings_input_dim=POOLED_DIM + 6 * TIME_IDS_DIM,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    ), seed)


def unet_2d(seed: int = 0):
    """UNet2DModel (unconditional, DDPM): 3 levels x 1 res block, attention at the middle level: 6 skips."""
    return seeded(diffusers.UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, block_out_channels=(8, 16, 16), layers_per_block=1,
        norm_num_groups=4, attention_head_dim=4,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    ), seed)


SVD_FRAMES = 2


def svd_unet(seed: int = 0):
    """UNetSpatioTemporalConditionModel (SVD), 2 levels x 1 res block (GroupNorm is fixed at 32 groups): 4 skips."""
    return seeded(diffusers.UNetSpatioTemporalConditionModel(
        sample_size=8, in_channels=8, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        cross_attention_dim=CONTEXT_DIM, num_attention_heads=(2, 4), addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=12, num_frames=SVD_FRAMES,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
    ), seed)


def motion_unet(seed: int = 0):
    """UNetMotionModel (AnimateDiff), 2 levels x 1 res block with motion modules: 4 skips."""
    return seeded(diffusers.UNetMotionModel(
        sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
        cross_attention_dim=CONTEXT_DIM, num_attention_heads=2,
        motion_num_attention_heads=2, motion_max_seq_length=8,
        down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
        up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"),
    ), seed)


def unet_3d(seed: int = 0):
    """UNet3DConditionModel (ModelScope text-to-video), 2 levels x 1 res block: 4 skips."""
    return seeded(diffusers.UNet3DConditionModel(
        sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
        cross_attention_dim=CONTEXT_DIM, attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
    ), seed)


HUNYUAN_LAYERS = 10  # blocks 0-3 push, 6-9 pop: 4 skips (40 layers, 19 skips in the released model)


def hunyuan_dit(seed: int = 0):
    return seeded(diffusers.HunyuanDiT2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, patch_size=2, sample_size=8,
        hidden_size=16, num_layers=HUNYUAN_LAYERS, mlp_ratio=2.0, cross_attention_dim=CONTEXT_DIM,
        cross_attention_dim_t5=CONTEXT_DIM, pooled_projection_dim=8, text_len=TEXT_TOKENS, text_len_t5=TEXT_TOKENS,
        use_style_cond_and_image_meta_size=False,
    ), seed)


def flux(seed: int = 0, double: int = 2, single: int = 3):
    return seeded(diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=8, num_layers=double, num_single_layers=single, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=CONTEXT_DIM, pooled_projection_dim=POOLED_DIM,
        axes_dims_rope=(2, 2, 4),
    ), seed)


def sd3(seed: int = 0, layers: int = 3):
    return seeded(diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=layers, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=CONTEXT_DIM, caption_projection_dim=16, pooled_projection_dim=POOLED_DIM,
        out_channels=4, pos_embed_max_size=8,
    ), seed)


def unet_inputs(kind: str, seed: int = 1, batch: int = 1) -> dict:
    """Keyword arguments of one forward of the tiny model of ``kind`` (timestep added by the caller)."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    context = randn(batch, TEXT_TOKENS, CONTEXT_DIM)
    if kind == "sd1":
        return {"sample": randn(batch, 4, 16, 16), "encoder_hidden_states": context}
    if kind == "sdxl":
        return {"sample": randn(batch, 4, 16, 16), "encoder_hidden_states": context,
                "added_cond_kwargs": {"text_embeds": randn(batch, POOLED_DIM), "time_ids": randn(batch, 6)}}
    if kind == "unet2d":
        return {"sample": randn(batch, 3, 16, 16)}
    if kind == "svd":
        return {"sample": randn(batch, SVD_FRAMES, 8, 8, 8), "encoder_hidden_states": context,
                "added_time_ids": randn(batch, 3)}
    if kind == "motion":  # AnimateDiff's pipeline repeats the prompt per frame, the U-Net expects it so
        return {"sample": randn(batch, 4, 2, 8, 8), "encoder_hidden_states": context.repeat_interleave(2, dim=0)}
    if kind == "unet3d":
        return {"sample": randn(batch, 4, 2, 8, 8), "encoder_hidden_states": context}
    if kind == "hunyuan":
        mask = torch.ones(batch, TEXT_TOKENS, dtype=torch.long)
        return {"hidden_states": randn(batch, 4, 8, 8), "encoder_hidden_states": context,
                "text_embedding_mask": mask, "encoder_hidden_states_t5": randn(batch, TEXT_TOKENS, CONTEXT_DIM),
                "text_embedding_mask_t5": mask,
                "image_rotary_emb": hunyuan_rotary(8 // 2, 8 // 2)}
    if kind == "flux":
        tokens = 16
        return {"hidden_states": randn(batch, tokens, 8), "encoder_hidden_states": context,
                "pooled_projections": randn(batch, POOLED_DIM), "img_ids": flux_ids(4, 4),
                "txt_ids": torch.zeros(TEXT_TOKENS, 3)}
    if kind == "sd3":
        return {"hidden_states": randn(batch, 4, 8, 8), "encoder_hidden_states": context,
                "pooled_projections": randn(batch, POOLED_DIM)}
    raise ValueError(kind)


def hunyuan_rotary(height: int, width: int):
    from diffusers.models.embeddings import get_2d_rotary_pos_embed

    return get_2d_rotary_pos_embed(8, ((0, 0), (height, width)), (height, width))


def flux_ids(height: int, width: int) -> torch.Tensor:
    ids = torch.zeros(height, width, 3)
    ids[..., 1] = torch.arange(height)[:, None]
    ids[..., 2] = torch.arange(width)[None, :]
    return ids.reshape(-1, 3)


BUILDERS = {"sd1": sd1_unet, "sdxl": sdxl_unet, "unet2d": unet_2d, "svd": svd_unet, "motion": motion_unet,
            "unet3d": unet_3d, "hunyuan": hunyuan_dit, "flux": flux, "sd3": sd3}
SKIP_COUNTS = {"sd1": 12, "sdxl": 9, "unet2d": 6, "svd": 4, "motion": 4, "unet3d": 4, "hunyuan": 4}
UNET_KINDS = ("sd1", "sdxl", "unet2d", "svd", "motion", "unet3d")


def run(model, kind: str, timestep=None, **overrides):
    inputs = {**unet_inputs(kind), **overrides}
    if timestep is None:
        timestep = torch.tensor([0.5 if kind == "flux" else 500.0])  # Flux's pipeline passes sigma
    with torch.no_grad():
        output = model(timestep=timestep, **inputs, return_dict=False)[0]
    return output


@contextlib.contextmanager
def unet_skip_probe(model):
    """Per forward: {"residuals": down-path residuals in push order, "received": each up-block resnet's input}."""
    calls = []
    handles = []

    def on_first_down_block(module, args, kwargs):  # what enters it is the first residual
        x = args[0] if args else kwargs["hidden_states"]
        calls.append({"residuals": [x.detach().clone()], "received": []})

    def on_down_block(module, args, output):
        calls[-1]["residuals"].extend(r.detach().clone() for r in output[1])

    def on_resnet(module, args, kwargs):
        x = args[0] if args else kwargs.get("input_tensor", kwargs.get("hidden_states"))
        calls[-1]["received"].append(x.detach().clone())

    try:
        handles.append(model.down_blocks[0].register_forward_pre_hook(on_first_down_block, with_kwargs=True))
        for block in model.down_blocks:
            handles.append(block.register_forward_hook(on_down_block))
        for block in model.up_blocks:
            for resnet in block.resnets:
                handles.append(resnet.register_forward_pre_hook(on_resnet, with_kwargs=True))
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def received_skips(call: dict) -> list:
    """(skip as pushed, skip as its resnet received it) for skip 0 (deepest) ... N - 1."""
    residuals = call["residuals"]
    n = len(residuals)
    assert len(call["received"]) == n, "one resnet per skip"
    pairs = []
    for k, received in enumerate(call["received"]):
        pushed = residuals[n - 1 - k]
        pairs.append((pushed, received[:, received.shape[1] - pushed.shape[1]:]))
    return pairs


@contextlib.contextmanager
def hunyuan_skip_probe(model):
    """Per forward: {skip index: (pushed, received)}; the received skip is read where the block concatenates it."""
    layers = model.config.num_layers
    first_popping = layers // 2 + 1
    n_skips = layers - first_popping
    calls = []
    handles = []

    def on_push(index):
        def hook(module, args, output):
            if index == 0:
                calls.append({"pushed": {}, "received": {}})
            calls[-1]["pushed"][n_skips - 1 - index] = output.detach().clone()
        return hook

    def on_concat(skip_index):
        def hook(module, args):
            cat = args[0]
            calls[-1]["received"][skip_index] = cat[..., cat.shape[-1] // 2:].detach().clone()
        return hook

    try:
        for index in range(n_skips):
            handles.append(model.blocks[index].register_forward_hook(on_push(index)))
            handles.append(model.blocks[first_popping + index].skip_norm.register_forward_pre_hook(on_concat(index)))
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def module_state(model: torch.nn.Module) -> dict:
    """Everything a hook or an attribute could leave behind on any submodule, plus the weights."""
    state = {}
    for name, module in model.named_modules():
        state[name] = (
            sorted(vars(module).keys()),
            len(module._forward_pre_hooks), len(module._forward_hooks), len(module._forward_pre_hooks_with_kwargs),
            len(module._forward_hooks_with_kwargs), len(module._backward_hooks),
            "forward" in vars(module),
        )
    return state
