"""The A1111 hook path against the real ldm UNetModel (stable-diffusion-sdkit, the code A1111 runs).

Small SD1-like and SD2-like U-Nets (real block structure, 32/64/128 channels): the hooked forward
equals an independent reference forward bit for bit, removal restores the original output
exactly, an exception inside the forward leaves no hook, rho = 1 changes nothing, bf16 autocast
matches too; full-size SD1.5 / SD2.1 / SDXL / SDXL-refiner skip plans are computed on the meta
device.
"""

from __future__ import annotations

import pytest
import torch

from skip_tuning import SkipScalingHooks, count_long_skips, rho_schedule, skip_channel_plan

pytest.importorskip("ldm.modules.diffusionmodules.openaimodel", reason="stable-diffusion-sdkit (ldm) is not installed")

from webui_stub import unets  # noqa: E402

SD15_PLAN = (1280, 1280, 1280, 1280, 1280, 640, 640, 640, 320, 320, 320, 320)
SDXL_PLAN = (1280, 1280, 640, 640, 640, 320, 320, 320, 320)
TINY_PLAN = (128, 128, 128, 128, 128, 64, 64, 64, 32, 32, 32, 32)


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny models run fastest on one thread (and do not fight other jobs for the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models():
    return {kind: unets.tiny_unet(kind, seed=index) for index, kind in enumerate(("sd1", "sd2"))}


@pytest.fixture(scope="module")
def batch():
    return unets.inputs()


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_hooked_forward_equals_reference_bitwise_and_removal_restores(models, batch, kind):
    unet = models[kind]
    x, t, context = batch
    assert skip_channel_plan(unet) == TINY_PLAN
    rhos = rho_schedule(count_long_skips(unet), 0.7, 1.1)
    with torch.no_grad():
        original = unet(x, t, context=context)
        expected = unets.reference_forward(unet, x, t, context, rhos)
        with SkipScalingHooks(unet, rhos) as hooks:
            assert unets.hook_count(unet) == 12 and hooks.installed
            tuned = unet(x, t, context=context)
        after = unet(x, t, context=context)
    assert torch.equal(tuned, expected)
    assert not torch.equal(tuned, original)  # the skips matter in this model
    assert unets.hook_count(unet) == 0
    assert torch.equal(after, original)


def test_rho_one_is_the_identity(models, batch):
    unet = models["sd1"]
    x, t, context = batch
    with torch.no_grad():
        original = unet(x, t, context=context)
        hooks = SkipScalingHooks(unet, rho_schedule(12, 1.0, 1.0)).install()
        try:
            assert unets.hook_count(unet) == 0  # nothing to scale, nothing attached
            same = unet(x, t, context=context)
        finally:
            hooks.remove()
        assert torch.equal(same, original)
        # Only the top skip at 1: eleven hooks, and the reference agrees bit for bit.
        rhos = rho_schedule(12, 0.9, 1.0)
        expected = unets.reference_forward(unet, x, t, context, rhos)
        with SkipScalingHooks(unet, rhos):
            assert unets.hook_count(unet) == 11
            assert torch.equal(unet(x, t, context=context), expected)


def test_exception_inside_the_forward_leaves_no_hook(models, batch):
    unet = models["sd2"]
    x, t, context = batch

    def explode(module, args, output):
        raise RuntimeError("boom in the middle of the U-Net")

    handle = unet.output_blocks[5].register_forward_hook(explode)
    try:
        with pytest.raises(RuntimeError, match="boom"), torch.no_grad():
            with SkipScalingHooks(unet, rho_schedule(12, 0.8, 0.9)):
                assert unets.hook_count(unet) == 12
                unet(x, t, context=context)
    finally:
        handle.remove()
    assert unets.hook_count(unet) == 0


def test_install_is_idempotent(models, batch):
    unet = models["sd1"]
    hooks = SkipScalingHooks(unet, rho_schedule(12, 0.8))  # rho_top = 1: the top skip needs no hook
    try:
        hooks.install()
        hooks.install()
        assert unets.hook_count(unet) == 11
    finally:
        hooks.remove()
        hooks.remove()
    assert unets.hook_count(unet) == 0


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_bf16_autocast_matches_the_reference_bitwise(models, batch, kind):
    unet = models[kind]
    x, t, context = batch
    rhos = rho_schedule(12, 0.75)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = unets.reference_forward(unet, x, t, context, rhos)
        with SkipScalingHooks(unet, rhos):
            tuned = unet(x, t, context=context)
        original = unet(x, t, context=context)
    assert tuned.dtype == expected.dtype
    assert torch.equal(tuned, expected)
    assert not torch.equal(tuned, original)
    assert unets.hook_count(unet) == 0


def test_width_mismatch_does_nothing_and_warns_once(models, caplog):
    """A U-Net fed a different concatenation (a foreign forward) is left alone, with one warning."""
    unet = models["sd1"]
    block = unet.output_blocks[0]
    with SkipScalingHooks(unet, rho_schedule(12, 0.5)):
        hook = next(iter(block._forward_pre_hooks.values()))
        odd = torch.randn(1, 100, 1, 1)
        with caplog.at_level("WARNING", logger="skip_tuning"):
            assert hook(block, (odd, None, None)) is None
            assert hook(block, (odd, None, None)) is None
    assert len([r for r in caplog.records if "left unscaled" in r.getMessage()]) == 1


def _meta_ldm(config):
    with torch.device("meta"):
        return unets.unet_class()(**config)


@pytest.mark.parametrize("name", ["sd15", "sd21"])
def test_full_size_sd1_sd2_plans_on_meta(name):
    unet = _meta_ldm(unets.FULL_SIZE[name])
    assert next(unet.parameters()).is_meta
    assert count_long_skips(unet) == 12
    assert skip_channel_plan(unet) == SD15_PLAN


def test_full_size_sdxl_plan_on_meta_with_ldm_channel_layout():
    """ldm's UNetModel cannot take SDXL's config (per-level transformer depths, adm label embedding),
    so this builds SDXL's channel layout (320 x [1, 2, 4], 2 res blocks, attention at levels 1-2) with
    depth-1 transformers: the skip plan depends only on the channel layout. The real SDXL config is
    checked with ComfyUI's UNetModel below when a checkout is present."""
    config = dict(unets.FULL_SIZE["sd21"], channel_mult=[1, 2, 4], attention_resolutions=[4, 2], context_dim=2048)
    unet = _meta_ldm(config)
    assert count_long_skips(unet) == 9
    assert skip_channel_plan(unet) == SDXL_PLAN


SDXL_UNET_CONFIG = {  # ComfyUI's detected unet_config for SDXL base (same structure as sgm's UNetModel)
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 64,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "use_temporal_attention": False,
    "use_temporal_resblock": False,
}
SDXL_REFINER_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": 2560, "in_channels": 4, "model_channels": 384,
    "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [0, 0, 4, 4, 4, 4, 0, 0], "channel_mult": [1, 2, 4, 4],
    "transformer_depth_middle": 4, "use_linear_in_transformer": True, "context_dim": 1280, "num_head_channels": 64,
    "transformer_depth_output": [0, 0, 0, 4, 4, 4, 4, 4, 4, 0, 0, 0], "use_temporal_attention": False,
    "use_temporal_resblock": False,
}


@pytest.mark.comfyui
@pytest.mark.parametrize("name,config,plan", [
    ("sdxl", SDXL_UNET_CONFIG, SDXL_PLAN),
    ("sdxl-refiner", SDXL_REFINER_CONFIG, (1536,) * 5 + (768,) * 3 + (384,) * 4),
])
def test_full_size_sdxl_plans_on_meta_with_comfyui(comfy, name, config, plan):
    """ComfyUI's UNetModel takes SDXL's real config; ``comfy`` (tests/conftest.py) skips without a checkout."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    unet = UNetModel(**config, device="meta")
    assert next(unet.parameters()).is_meta
    assert count_long_skips(unet) == len(plan)
    assert skip_channel_plan(unet) == plan
