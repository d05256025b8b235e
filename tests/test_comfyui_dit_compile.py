"""Residual Tuning (Flux, SD3) and the U-ViT path (Hunyuan3D 2.1) under ComfyUI's TorchCompileModel, in process.

Both are replace patches that an APPLY_MODEL wrapper puts into each call's ``transformer_options``; the
compiled network finds them there. Since PR #11317 (December 2025) TorchCompileModel drops every guard on
``transformer_options``, so a graph replays whatever it read through it: which slots hold a patch and every
Python number in a patch's closure. The patches therefore put a patch in every slot on every call (factor 1
outside the window) and read their factors as tensors when traced (docs/comfyui-host-states.md).

Each model is compiled with inductor as one graph (PyTorch attention, what GPUs run) and sampled for a first
node, the same node again, a second node with other factors and a window, a neutral node and the plain
model, each checked against eager sampling; the graphs each run adds are counted. HunyuanDiT is not here:
ComfyUI's HunyuanDiT does not compile on this torch, with or without the pack (its test below says why).
"""

from __future__ import annotations

import importlib

import comfy_helpers as ch
import pytest
import torch
from test_comfyui_host_compile import assert_same_sample, compiled, graphs_compiled, max_error

pytestmark = [pytest.mark.comfyui, pytest.mark.compile]

STEPS = 3
# The DiT modules that bind ComfyUI's attention function at import: one graph needs PyTorch's there too.
ATTENTION_USERS = ("comfy.ldm.flux.math", "comfy.ldm.modules.diffusionmodules.mmdit",
                   "comfy.ldm.hunyuan3dv2_1.hunyuandit")


@pytest.fixture(scope="module")
def adapters(skip_tuning_pack):
    return skip_tuning_pack.skip_tuning.comfyui


@pytest.fixture
def one_graph(comfy, monkeypatch):
    """PyTorch attention wherever the DiTs call ComfyUI's (its CPU attention breaks the graph); dynamo's
    caches are emptied before and after."""
    import comfy.ldm.modules.attention as attention

    for name in ATTENTION_USERS:
        module = importlib.import_module(name)
        if hasattr(module, "optimized_attention"):
            monkeypatch.setattr(module, "optimized_attention", attention.attention_pytorch)
    monkeypatch.setattr(attention, "optimized_attention", attention.attention_pytorch)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def node_drops_transformer_options_guards(node) -> bool:
    from test_comfyui_host_compile import node_drops_transformer_options_guards as drops

    with pytest.MonkeyPatch.context() as monkeypatch:
        return drops(node, monkeypatch)


def flux_nodes(adapters, base):
    tune = adapters.residual.apply_residual_tuning
    return {"first": tune(base, 0.8, 1.0), "second": tune(base, 0.9, 1.2, 0.3, 0.3, 0.7), "neutral": tune(base, 1, 1)}


def uvit_nodes(adapters, base):
    tune = adapters.adapter.apply_skip_tuning
    return {"first": tune(base, 0.6, 1.0), "second": tune(base, 0.8, 1.3, 0.3, 0.7), "neutral": tune(base, 1, 1)}


CASES = {
    # kind: (builder, node factory, sampler)
    "flux": (lambda: ch.build_tiny_flux(depth=1, depth_single_blocks=1), flux_nodes,
             lambda model: ch.sample(model, steps=STEPS, channels=16)),
    "sd3": (lambda: ch.build_tiny_sd3(depth=2), flux_nodes, lambda model: ch.sample(model, steps=STEPS, channels=16)),
    "hunyuan3d_2_1": (lambda: ch.build_tiny_hunyuan3d(num_moe_layers=0, depth=7), uvit_nodes,
                      lambda model: ch.sample_hunyuan3d(model, steps=STEPS)),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_compiled_sampling_equals_eager_for_every_node_and_the_plain_model(kind, one_graph, adapters,
                                                                          torch_compile_node):
    build, make_nodes, sample = CASES[kind]
    base = build()
    models = {**make_nodes(adapters, base), "plain": base}
    eager = {name: sample(model) for name, model in models.items()}
    scale = float(eager["plain"].abs().max())
    assert max_error(eager["first"], eager["plain"]) > 1e-2 * scale, "the first node changes the sample"
    assert max_error(eager["second"], eager["first"]) > 1e-2 * scale, "the second node differs from the first"
    assert torch.equal(eager["neutral"], eager["plain"]), "a neutral node is bit-identical to the plain model"

    new_graphs = {}
    for name in ("first", "first", "second", "neutral"):
        before = graphs_compiled()
        out = sample(compiled(torch_compile_node, models[name]))
        new_graphs.setdefault(name, []).append(graphs_compiled() - before)
        assert_same_sample(out, eager[name], name)
    # One graph for every node: factors, windows and calls outside the window are inputs, not constants.
    assert new_graphs == {"first": [1, 0], "second": [0], "neutral": [0]}, new_graphs

    compiled_plain = compiled(torch_compile_node, base)
    if node_drops_transformer_options_guards(torch_compile_node):
        # ComfyUI's own limit (the U-Net and FreeU alike): the tuned graph replays for the plain model and
        # looks for the patches in its options. A neutral node is the workaround, and it was checked above.
        with pytest.raises(KeyError, match="patches_replace"):
            sample(compiled_plain)
    else:
        before = graphs_compiled()
        assert_same_sample(sample(compiled_plain), eager["plain"], "plain")
        assert graphs_compiled() - before == 1, "the plain model is a graph of its own"


def test_hunyuan_dit_does_not_compile_in_inference_mode(comfy):
    """Why HunyuanDiT is not tested compiled: ComfyUI's HunyuanDiT builds its rotary embedding with NumPy in
    every forward (``calc_rope``); dynamo turns the arrays into tensors and, under ``torch.inference_mode``
    (ComfyUI samples in it), fails the guard it has just built on them. torch's bug (2.14.1), with or without
    the pack; when this starts to compile, HunyuanDiT belongs in the test above."""
    from comfy.ldm.hydit.models import calc_rope

    torch._dynamo.reset()
    compiled_rope = torch.compile(calc_rope, backend="eager")
    try:
        with torch.inference_mode(), pytest.raises(AssertionError, match="Guard failed on the same frame"):
            compiled_rope(torch.zeros(1, 4, 8, 8), 2, 16)
        with torch.no_grad():
            assert torch.equal(compiled_rope(torch.zeros(1, 4, 8, 8), 2, 16)[0], calc_rope(torch.zeros(1, 4, 8, 8),
                                                                                             2, 16)[0])
    finally:
        torch._dynamo.reset()
