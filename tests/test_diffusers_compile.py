"""The diffusers adapter under torch.compile, on tiny real diffusers models (CPU).

The adapter's hooks are PyTorch module hooks. Dynamo does not guard module hooks unless
``torch._dynamo.config.skip_nnmodule_hook_guards`` is off (torch's default is on): a graph compiled before
hooks were attached never runs them. Removing hooks is seen either way (a traced hook reads its factors
through itself, so a graph without it is not replayed). With the guards on, attaching is seen too: each
handle traces one graph (its factors are tensors on the traced path, so every block and every call shares
it), and removing it returns to the plain graph. Both are
tested, in both orders (compiled, then tuned; tuned, then compiled), whole and ``fullgraph=True``, with
diffusers' regional compilation, and on HunyuanDiT; each compiled output is checked against the eager one.

Most cases use dynamo's ``aot_eager`` backend (what dynamo traces and guards does not depend on the backend,
and it compiles faster on 2 CPU cores); one case runs inductor.
"""

from __future__ import annotations

import logging

import diffusers_helpers as h
import pytest
import torch

from skip_tuning.diffusers import apply_skip_tuning

pytestmark = pytest.mark.compile

BACKEND = "aot_eager"
SIGMA_IN, SIGMA_OUT = 900.0, 100.0  # timesteps inside and outside a window start=0, end=0.3


def graphs_compiled() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def max_error(a, b) -> float:
    return float((a - b).abs().max())


def assert_close(out, expected, label=""):
    """Equal up to the rounding of compiled kernels, far below any factor's effect."""
    bound = 1e-5 * float(expected.abs().max())
    assert max_error(out, expected) <= bound, (label, max_error(out, expected), bound)


@pytest.fixture
def dynamo(monkeypatch):
    """Dynamo with its caches emptied before and after; ``guard_hooks()`` turns its hook guards on."""
    torch._dynamo.reset()

    class Dynamo:
        @staticmethod
        def guard_hooks():
            monkeypatch.setattr(torch._dynamo.config, "skip_nnmodule_hook_guards", False)

    yield Dynamo
    torch._dynamo.reset()


def small_unet(seed: int = 0):
    """A UNet2DConditionModel of two levels, one with cross-attention (4 skips): small enough to compile in
    seconds, with every kind of up block the adapter hooks."""
    return h.seeded(h.diffusers.UNet2DConditionModel(
        sample_size=16, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
        cross_attention_dim=h.CONTEXT_DIM, attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    ), seed)


@pytest.fixture(scope="module")
def unet():
    """The small U-Net and its eager outputs: plain, two handles, a window (inside and outside)."""
    model = small_unet()

    def run(t=500.0):
        return h.run(model, "sd1", timestep=torch.tensor([t]))

    eager = {"plain": run()}
    with apply_skip_tuning(model, 0.7, 1.0):
        eager["first"] = run()
    with apply_skip_tuning(model, 0.5, 1.2):
        eager["second"] = run()
    with apply_skip_tuning(model, 0.5, 1.2, start=0.0, end=0.3):
        eager["window_in"], eager["window_out"] = run(SIGMA_IN), run(SIGMA_OUT)
    eager["plain_in"], eager["plain_out"] = run(SIGMA_IN), run(SIGMA_OUT)
    scale = float(eager["plain"].abs().max())
    assert max_error(eager["first"], eager["plain"]) > 1e-2 * scale
    assert max_error(eager["second"], eager["first"]) > 1e-2 * scale
    assert torch.equal(eager["window_out"], eager["plain_out"])
    assert not torch.equal(eager["window_in"], eager["plain_in"])
    return model, eager


def run_counted(model, t=500.0):
    before = graphs_compiled()
    out = h.run(model, "sd1", timestep=torch.tensor([t]))
    return out, graphs_compiled() - before


@pytest.mark.parametrize("fullgraph", [False, True])
def test_compiled_then_tuned_with_hook_guards(unet, dynamo, fullgraph):
    model, eager = unet
    dynamo.guard_hooks()
    compiled = torch.compile(model, backend=BACKEND, fullgraph=fullgraph)
    out, graphs = run_counted(compiled)
    assert_close(out, eager["plain"], "plain")
    assert graphs == 1

    new_graphs = []
    for name, args, kwargs in (("first", (0.7, 1.0), {}), ("second", (0.5, 1.2), {})):
        with apply_skip_tuning(compiled, *args, **kwargs):
            out, graphs = run_counted(compiled)
            assert_close(out, eager[name], name)
            new_graphs.append(graphs)
            out, graphs = run_counted(compiled)
            new_graphs.append(graphs)
        out, graphs = run_counted(compiled)
        assert_close(out, eager["plain"], f"plain after {name}")
        new_graphs.append(graphs)
    with apply_skip_tuning(compiled, 0.5, 1.2, start=0.0, end=0.3):
        for where, t in (("in", SIGMA_IN), ("out", SIGMA_OUT)):
            out, graphs = run_counted(compiled, t)
            assert_close(out, eager[f"window_{where}"], f"window, {where}")
            new_graphs.append(graphs)
    # One graph per handle (the hooks are new; with a window two: dynamo compiles the model's own pre-hook,
    # the window's gate, as a frame of its own), none for a second call, for the plain model again after
    # remove(), or for a call outside the window.
    assert new_graphs == [1, 0, 0, 1, 0, 0, 2, 0], new_graphs


def test_tuned_then_compiled_with_hook_guards_and_inductor(unet, dynamo):
    model, eager = unet
    dynamo.guard_hooks()
    handle = apply_skip_tuning(model, 0.7, 1.0)
    compiled = torch.compile(model, backend="inductor", fullgraph=True)
    out, graphs = run_counted(compiled)
    assert_close(out, eager["first"], "first")
    assert graphs == 1
    handle.remove()
    out, graphs = run_counted(compiled)
    assert_close(out, eager["plain"], "plain after remove()")
    assert graphs == 1


def test_without_hook_guards_a_graph_misses_new_hooks_and_the_adapter_warns(unet, dynamo, caplog):
    """torch's default. Removing hooks is seen: the graph reads their factors through them, so without
    them the graph is not replayed. Hooks attached after a graph was compiled are not run by it; the adapter
    warns, and torch.compiler.reset() is the workaround (docs/diffusers.md)."""
    model, eager = unet
    assert torch._dynamo.config.skip_nnmodule_hook_guards, "torch's default"
    handle = apply_skip_tuning(model, 0.7, 1.0)
    compiled = torch.compile(model, backend=BACKEND)
    assert_close(h.run(compiled, "sd1"), eager["first"], "first")
    handle.remove()
    assert_close(h.run(compiled, "sd1"), eager["plain"], "plain after remove()")

    with caplog.at_level(logging.WARNING, logger="skip_tuning"):
        handle = apply_skip_tuning(compiled, 0.5, 1.2)
    assert "is compiled" in caplog.text and "torch.compiler.reset()" in caplog.text
    assert_close(h.run(compiled, "sd1"), eager["plain"], "the graph does not run hooks attached after it")
    torch.compiler.reset()
    assert_close(h.run(compiled, "sd1"), eager["second"], "second after reset")
    handle.remove()
    assert_close(h.run(compiled, "sd1"), eager["plain"], "plain after remove()")


def test_regional_compilation_runs_the_hooks_outside_the_compiled_blocks(dynamo):
    """``compile_repeated_blocks`` compiles the U-Net's transformer blocks; the up blocks, which the hooks
    sit on, run eagerly, so attaching and removing needs no recompile, hook guards or not."""
    model = small_unet()
    plain = h.run(model, "sd1")
    with apply_skip_tuning(model, 0.7, 1.0):
        tuned = h.run(model, "sd1")
    model.compile_repeated_blocks(backend=BACKEND)
    out, first_graphs = run_counted(model)
    assert_close(out, plain, "plain")
    assert first_graphs >= 1
    with apply_skip_tuning(model, 0.7, 1.0):
        out, graphs = run_counted(model)
        assert_close(out, tuned, "tuned")
    out, more = run_counted(model)
    assert_close(out, plain, "plain after remove()")
    assert graphs == 0 and more == 0


def test_hunyuan_dit_tuned_then_compiled_fullgraph(dynamo):
    model = h.hunyuan_dit()
    plain = h.run(model, "hunyuan")
    dynamo.guard_hooks()
    handle = apply_skip_tuning(model, 0.6, 1.0)
    tuned = h.run(model, "hunyuan")
    assert max_error(tuned, plain) > 1e-2 * float(plain.abs().max())
    compiled = torch.compile(model, backend=BACKEND, fullgraph=True)
    before = graphs_compiled()
    assert_close(h.run(compiled, "hunyuan"), tuned, "tuned")
    handle.remove()
    assert_close(h.run(compiled, "hunyuan"), plain, "plain after remove()")
    assert graphs_compiled() - before == 2
