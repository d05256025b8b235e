"""The Forge / reForge path: the core's output-block patch on a clone of forge_objects.unet.

Forge's U-Net patcher is ComfyUI-derived (clone(), set_model_output_block_patch, the
``fn(h, hsp, transformer_options)`` contract), so the end-to-end check runs through ComfyUI's own
ModelPatcher and UNetModel when a ComfyUI checkout is present; the wiring checks use a minimal
patcher with the same three members and run everywhere. ``p`` is a plain object carrying what
Forge's processing object offers at process_before_every_sampling (sd_model.forge_objects.unet,
is_hr_pass, sampler.model_wrap_cfg, extra_generation_params).
"""

from __future__ import annotations

import copy
import logging
from types import SimpleNamespace

import pytest
import torch

import skip_tuning.webui.script as webui
from skip_tuning import make_output_block_patch, rho_schedule


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny models run fastest on one thread (and do not fight other jobs for the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class MinimalPatcher:
    """The members of Forge's UnetPatcher (and ComfyUI's ModelPatcher) the script uses."""

    def __init__(self, diffusion_model):
        self.model = SimpleNamespace(diffusion_model=diffusion_model)
        self.model_options = {"transformer_options": {}}

    def clone(self):
        twin = MinimalPatcher(self.model.diffusion_model)
        twin.model = self.model
        twin.model_options = copy.deepcopy(self.model_options)
        return twin

    def set_model_output_block_patch(self, patch):
        patches = self.model_options["transformer_options"].setdefault("patches", {})
        patches["output_block_patch"] = patches.get("output_block_patch", []) + [patch]


def blocks_model(n_skips: int):
    """Just the structure count_long_skips reads."""
    model = torch.nn.Module()
    model.input_blocks = torch.nn.ModuleList(torch.nn.Identity() for _ in range(n_skips))
    model.output_blocks = torch.nn.ModuleList(torch.nn.Identity() for _ in range(n_skips))
    return model


def forge_p(unet_patcher, *args, is_hr_pass=False):
    denoiser = SimpleNamespace(step=0, total_steps=10)
    p = SimpleNamespace(
        sd_model=SimpleNamespace(forge_objects=SimpleNamespace(unet=unet_patcher)),
        is_hr_pass=is_hr_pass, sampler=SimpleNamespace(model_wrap_cfg=denoiser), extra_generation_params={},
    )
    return p, args


def run_process(p, args):
    script = webui.SkipTuningScriptLogic()
    script.process(p, *args)
    script.process_before_every_sampling(p, *args)
    return script


def our_patches(unet_patcher):
    return unet_patcher.model_options["transformer_options"].get("patches", {}).get("output_block_patch", [])


def test_clone_patch_assign_once_per_pass():
    base = MinimalPatcher(blocks_model(9))
    p, args = forge_p(base, True, 0.7, 0.9)
    script = run_process(p, args)
    clone = p.sd_model.forge_objects.unet
    assert clone is not base and our_patches(base) == [] and len(our_patches(clone)) == 1
    script.process_before_every_sampling(p, *args)  # Forge may call it again in the same pass
    assert p.sd_model.forge_objects.unet is clone and len(our_patches(clone)) == 1
    assert "Skip Tuning rho_bottom" in p.extra_generation_params

    patch = our_patches(clone)[0]
    rhos = rho_schedule(9, 0.7, 0.9)  # N read from the model
    h, hsp = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    for index, rho in enumerate(rhos):
        out_h, out_hsp = patch(h, hsp, {"block": ("output", index)})
        assert out_h is h and torch.equal(out_hsp, hsp * rho)


def test_next_pass_starts_from_forges_reset_unet():
    base = MinimalPatcher(blocks_model(12))
    p, args = forge_p(base, True, 0.8)
    script = run_process(p, args)
    p.sd_model.forge_objects.unet = base  # Forge resets forge_objects before every pass
    p.is_hr_pass = True
    script.process_before_every_sampling(p, *args)
    assert p.sd_model.forge_objects.unet is not base and len(our_patches(p.sd_model.forge_objects.unet)) == 1


def test_window_gates_the_patch_by_sampling_progress():
    base = MinimalPatcher(blocks_model(12))
    p, args = forge_p(base, True, 0.5, 0.5, 30, 70)
    run_process(p, args)
    patch = our_patches(p.sd_model.forge_objects.unet)[0]
    hsp = torch.ones(1, 2, 1, 1)
    seen = []
    for step in range(10):
        p.sampler.model_wrap_cfg.step = step
        seen.append(float(patch(hsp, hsp, {"block": ("output", 0)})[1][0, 0, 0, 0]))
    assert seen == [1.0] * 3 + [0.5] * 4 + [1.0] * 3


@pytest.mark.parametrize("passes,is_hr_pass,patched", [
    ("First pass only", True, False), ("First pass only", False, True),
    ("Hires pass only", False, False), ("Hires pass only", True, True),
])
def test_hires_pass_selection(passes, is_hr_pass, patched):
    base = MinimalPatcher(blocks_model(12))
    p, args = forge_p(base, True, 0.8, 1.0, 0, 100, passes, is_hr_pass=is_hr_pass)
    run_process(p, args)
    assert (p.sd_model.forge_objects.unet is not base) == patched


def test_disabled_and_models_without_skips_leave_the_unet_alone(caplog):
    base = MinimalPatcher(blocks_model(12))
    p, args = forge_p(base, False, 0.8)
    run_process(p, args)
    assert p.sd_model.forge_objects.unet is base and p.extra_generation_params == {}

    flux = MinimalPatcher(torch.nn.Linear(2, 2))  # a DiT: no input/output blocks
    p, args = forge_p(flux, True, 0.8)
    with caplog.at_level(logging.WARNING, logger="skip_tuning"):
        script = run_process(p, args)
        script.process_before_every_sampling(p, *args)
    assert p.sd_model.forge_objects.unet is flux
    assert len([r for r in caplog.records if "no U-Net long skips" in r.getMessage()]) == 1
    assert "Skip Tuning" not in p.extra_generation_params


# ---------------------------------------------------------------------------------------------
# Through ComfyUI's ModelPatcher and UNetModel (Forge's patcher and U-Net loop derive from them)


def forward(unet_patcher, x, t, context):
    options = unet_patcher.model_options["transformer_options"]
    transformer_options = {**options, "patches": {k: list(v) for k, v in options.get("patches", {}).items()}}
    with torch.no_grad():
        return unet_patcher.model.diffusion_model(x, t, context=context, transformer_options=transformer_options)


@pytest.mark.comfyui
@pytest.mark.parametrize("kind,n_skips", [("sd1", 12), ("sdxl", 9)])
def test_through_comfyui_model_patcher(comfy, kind, n_skips):
    """``comfy`` (tests/conftest.py) imports the checkout, or skips with the reason when there is none."""
    import comfy_helpers

    base = comfy_helpers.build_tiny_unet(kind, seed=5)
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(1, 4, 8, 8, generator=generator)
    t = torch.tensor([500.0])
    context = torch.randn(1, comfy_helpers.CONTEXT_TOKENS, comfy_helpers.CONTEXT_DIM, generator=generator)

    p, args = forge_p(base, True, 0.6, 0.95)
    run_process(p, args)
    clone = p.sd_model.forge_objects.unet
    assert isinstance(clone, type(base)) and clone is not base and clone.model is base.model
    assert our_patches(base) == []

    rhos = rho_schedule(n_skips, 0.6, 0.95)
    reference = base.clone()
    reference.set_model_output_block_patch(lambda h, hsp, to: (h, hsp * rhos[to["block"][1]]))

    original = forward(base, x, t, context)
    tuned = forward(clone, x, t, context)
    assert torch.equal(tuned, forward(reference, x, t, context))
    assert not torch.equal(tuned, original)
    assert torch.equal(forward(base, x, t, context), original)  # the assigned clone left the base untouched
    assert torch.equal(forward(base.clone(), x, t, context), original)

    # The same patch function as the ComfyUI node's: the core's make_output_block_patch.
    core = base.clone()
    core.set_model_output_block_patch(make_output_block_patch(rhos))
    assert torch.equal(forward(core, x, t, context), tuned)
