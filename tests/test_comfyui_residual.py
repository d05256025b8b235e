"""The Residual Tuning (experimental) node on ComfyUI's real DiT classes (Flux, SD3's MMDiT), tiny and random.

Probe patches registered on the model before the node record each block's input and untuned output; the
next block's input is what left the block, so the factor is measured on the stream itself.
"""

import logging
import math

import comfy_helpers as ch
import pytest
import torch

pytestmark = pytest.mark.comfyui

STEPS = 3
FLUX_BLOCKS = (3, 3)  # double, single
SD3_DEPTH = 3


@pytest.fixture(scope="module")
def models(comfy):
    cache = {}

    def get(kind, dtype=torch.float32):
        if (kind, dtype) not in cache:
            if kind == "flux":
                cache[(kind, dtype)] = ch.build_tiny_flux(depth=FLUX_BLOCKS[0], depth_single_blocks=FLUX_BLOCKS[1],
                                                          dtype=dtype)
            elif kind == "sd3":
                cache[(kind, dtype)] = ch.build_tiny_sd3(depth=SD3_DEPTH)
            else:
                cache[(kind, dtype)] = ch.build_tiny_unet("sd1")
        return cache[(kind, dtype)]

    return get


def run(kind, model, steps=STEPS):
    size = 8
    return ch.sample(model, steps=steps, size=size, channels=16 if kind in ("flux", "sd3") else 4)


def block_keys(kind):
    if kind == "flux":
        return [("double_block", i) for i in range(FLUX_BLOCKS[0])] + [("single_block", i)
                                                                        for i in range(FLUX_BLOCKS[1])]
    return [("double_block", i) for i in range(SD3_DEPTH)]


def with_probes(model, keys, log):
    """A clone with a recording replace patch on every block: (input, untuned output) per call."""
    probed = model.clone()
    for key in keys:
        def probe(args, extra, key=key):
            x = args["img"].clone()
            out = extra["original_block"](args)
            log.setdefault(key, []).append((x, out["img"].clone()))
            return out
        probed.set_model_patch_replace(probe, "dit", key[0], key[1])
    return probed


KINDS = ["flux", "sd3"]


@pytest.mark.parametrize("kind", KINDS)
def test_rho_one_is_bit_identical_and_the_base_model_is_untouched(models, kind, comfy_nodes):
    model = models(kind)
    options_before = repr(model.model_options)
    plain = run(kind, model)
    tuned_model = comfy_nodes.ResidualTuning.execute(model, 1.0, 1.0, 0.0, 0.0, 1.0)[0]
    assert tuned_model is not model
    assert torch.equal(run(kind, tuned_model), plain)
    assert repr(model.model_options) == options_before
    assert not getattr(model, "wrappers", {}).get("apply_model")


@pytest.mark.parametrize("kind", KINDS)
def test_each_block_identity_path_is_scaled_by_its_rho(models, kind, comfy_nodes):
    keys = block_keys(kind)
    log = {}
    probed = with_probes(models(kind), keys, log)
    tuned = comfy_nodes.ResidualTuning.execute(probed, 0.8, 1.1, 0.0, 0.0, 1.0)[0]
    run(kind, tuned, steps=2)
    n = len(keys)
    rhos = [0.8 + 0.3 * i / (n - 1) for i in range(n)]
    checked = 0
    for k in range(n - 1):
        here, there = keys[k], keys[k + 1]
        for (x, untuned), (x_next, _) in zip(log[here], log[there]):
            left = untuned - (1.0 - rhos[k]) * x
            if here[0] != there[0]:  # Flux: the single-stream blocks see cat(txt, img)
                x_next = x_next[:, -left.shape[1]:]
            torch.testing.assert_close(x_next, left, rtol=1e-5, atol=1e-5)
            checked += 1
    assert checked >= 2 * (n - 1)


@pytest.mark.parametrize("kind", KINDS)
def test_start_depth_leaves_the_first_blocks_alone(models, kind, comfy_nodes):
    keys = block_keys(kind)
    log = {}
    probed = with_probes(models(kind), keys, log)
    tuned = comfy_nodes.ResidualTuning.execute(probed, 0.5, 0.5, 0.5, 0.0, 1.0)[0]
    run(kind, tuned, steps=1)
    first_tuned = int(0.5 * len(keys))
    (x0, untuned0), = log[keys[0]][:1]
    (x1, _), = log[keys[1]][:1]
    assert first_tuned >= 1 and torch.equal(x1, untuned0)  # block 0 untouched


@pytest.mark.parametrize("order", ["before", "after"])
def test_a_foreign_patch_on_the_same_block_keeps_working(models, order, comfy_nodes):
    model = models("flux")
    calls = []

    def foreign(args, extra):
        calls.append(1)
        return extra["original_block"](args)

    if order == "before":
        base = model.clone()
        base.set_model_patch_replace(foreign, "dit", "double_block", 0)
        tuned = comfy_nodes.ResidualTuning.execute(base, 0.9, 1.0, 0.0, 0.0, 1.0)[0]
    else:
        tuned = comfy_nodes.ResidualTuning.execute(model, 0.9, 1.0, 0.0, 0.0, 1.0)[0].clone()
        tuned.set_model_patch_replace(foreign, "dit", "double_block", 0)
    tuned_out = run("flux", tuned)
    assert calls, "the foreign patch was dropped"
    assert not torch.equal(tuned_out, run("flux", model))


def test_the_window_tunes_only_part_of_sampling(models, comfy_nodes):
    model = models("flux")
    node = comfy_nodes.ResidualTuning
    plain = run("flux", model, steps=4)
    full = run("flux", node.execute(model, 0.8, 1.0, 0.0, 0.0, 1.0)[0], steps=4)
    half = run("flux", node.execute(model, 0.8, 1.0, 0.0, 0.0, 0.5)[0], steps=4)
    assert not torch.equal(half, plain) and not torch.equal(half, full)


def test_bf16_models_sample_in_bf16(models, comfy_nodes):
    model = models("flux", torch.bfloat16)
    log = {}
    probed = with_probes(model, [("double_block", 0)], log)
    run("flux", comfy_nodes.ResidualTuning.execute(probed, 0.9, 1.0, 0.0, 0.0, 1.0)[0], steps=1)
    assert log[("double_block", 0)][0][0].dtype == torch.bfloat16


def test_models_without_a_known_dit_layout_pass_through_with_a_warning(models, caplog, comfy_nodes):
    model = models("unet")
    with caplog.at_level(logging.WARNING, logger="skip_tuning"):
        assert comfy_nodes.ResidualTuning.execute(model, 0.9, 1.0, 0.0, 0.0, 1.0)[0] is model
    assert "not a supported DiT" in caplog.text


@pytest.mark.parametrize("values", [(2.5, 1.0, 0.0), (0.9, math.nan, 0.0), (0.9, 1.0, 1.0), (0.9, 1.0, "x"),
                                    (0.9, 1.0, -0.1)])
def test_bad_values_are_refused_before_sampling(models, values, comfy_nodes):
    with pytest.raises(ValueError):
        comfy_nodes.ResidualTuning.execute(models("flux"), *values, 0.0, 1.0)
