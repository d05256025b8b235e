"""Skip Tuning under ComfyUI's TorchCompileModel (inductor on CPU), in process, in the real classes.

ComfyUI's U-Net compiles two ways, and both are tested:

* ``one_graph``: with PyTorch's attention (what GPUs run) dynamo traces the whole U-Net as one graph
  and inlines the output-block patch into it;
* ``split``: ComfyUI's CPU attention asks psutil for free memory, a graph break dynamo cannot resume
  inside the U-Net's wrapper executor, so the U-Net runs eagerly and every function it calls, the patch
  included, is compiled as a frame of its own.

Since PR #11317 (December 2025) TorchCompileModel drops every guard on ``transformer_options``. A graph
then replays whatever it read through it: the patch, the factors in its closure and (``split``) the
block index. Both are checked against eager sampling of the same model, for a first node, a second
node with other factors and a window, a neutral node, and a plain model; and the graphs each run adds
are counted.
"""

from __future__ import annotations

import comfy_helpers as ch
import pytest
import torch

pytestmark = pytest.mark.comfyui

STEPS = 4


@pytest.fixture(scope="module")
def nodes(skip_tuning_pack):
    return skip_tuning_pack.skip_tuning.comfyui.adapter


@pytest.fixture(params=["one_graph", "split"])
def attention(request, comfy, monkeypatch):
    """The attention ComfyUI's U-Net calls; dynamo's caches are emptied before and after."""
    import comfy.ldm.modules.attention as attention_module

    if request.param == "one_graph":
        monkeypatch.setattr(attention_module, "optimized_attention", attention_module.attention_pytorch)
        monkeypatch.setattr(attention_module, "optimized_attention_masked", attention_module.attention_pytorch)
    elif attention_module.optimized_attention is attention_module.attention_pytorch:
        pytest.skip("this machine runs PyTorch attention, which compiles as one graph")
    torch._dynamo.reset()
    yield request.param
    torch._dynamo.reset()


def compiled(node, model, backend="inductor"):
    """``model`` through ComfyUI's own TorchCompileModel node (V3 ``execute``)."""
    result = node.execute(model, backend)
    return result.result[0] if hasattr(result, "result") else result[0]


def node_drops_transformer_options_guards(node, monkeypatch) -> bool:
    """Whether the node hands torch.compile a guard filter that drops guards on transformer_options
    (torch.compile pops the filter from the options it is given, so it is caught on the way in)."""
    filters = []
    real_compile = torch.compile

    def recording_compile(*args, **kwargs):
        filters.append((kwargs.get("options") or {}).get("guard_filter_fn"))
        return real_compile(*args, **kwargs)

    class Entry:
        name = "L['transformer_options']['block'][1]"

    with monkeypatch.context() as patch:
        patch.setattr(torch, "compile", recording_compile)
        compiled(node, ch.build_tiny_unet("koala"))
    return any(guard_filter is not None and guard_filter([Entry()]) == [False] for guard_filter in filters)


def graphs_compiled() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def patch_frame_graphs(model) -> int:
    """Graphs dynamo holds for the output-block patch as a frame of its own (0 when it is inlined)."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    patch = model.model_options["transformer_options"]["patches"]["output_block_patch"][-1]
    return len(_debug_get_cache_entry_list(patch.__code__))


def max_error(a, b) -> float:
    return float((a - b).abs().max())


def assert_same_sample(out, expected, label=""):
    """Equal up to the rounding of inductor's kernels (not eager's), far below any node's effect."""
    bound = 1e-5 * float(expected.abs().max())
    assert max_error(out, expected) <= bound, (label, max_error(out, expected), bound)


def test_compiled_sampling_equals_eager_for_every_node_and_counts_its_graphs(attention, nodes, torch_compile_node):
    base = ch.build_tiny_unet("sd1")
    first = nodes.apply_skip_tuning(base, 0.7, 1.0)
    second = nodes.apply_skip_tuning(base, 0.5, 1.2, 0.3, 0.7)  # a changed node: other factors, a window
    neutral = nodes.apply_skip_tuning(base, 1.0, 1.0)
    eager = {name: ch.sample(model, steps=STEPS) for name, model in
             (("first", first), ("second", second), ("neutral", neutral), ("plain", base))}
    effect = max_error(eager["first"], eager["plain"])
    assert min(effect, max_error(eager["second"], eager["first"])) > 1e-2 * float(eager["plain"].abs().max())
    assert torch.equal(eager["neutral"], eager["plain"])

    new_graphs = {}
    for name, model in (("first", first), ("first", first), ("second", second), ("neutral", neutral)):
        before = graphs_compiled()
        out = ch.sample(compiled(torch_compile_node, model), steps=STEPS)
        new_graphs.setdefault(name, []).append(graphs_compiled() - before)
        assert_same_sample(out, eager[name], name)
    first_graphs, again = new_graphs["first"]
    assert again == 0, "a second run of the same model compiles nothing"
    n_skips = ch.TINY_UNET_SKIPS["sd1"]
    if attention == "one_graph":
        assert first_graphs == 1 and new_graphs["second"] == [0] and new_graphs["neutral"] == [0], new_graphs
        assert patch_frame_graphs(first) == 0, "the patch is inlined into the U-Net's graph"
    else:
        # The patch frame: one graph per block index at most, capped by dynamo's recompile limit (then eager).
        limit = torch._dynamo.config.recompile_limit
        assert 1 <= patch_frame_graphs(first) <= min(n_skips, limit)
        assert new_graphs["second"][0] <= limit and new_graphs["neutral"][0] <= limit, new_graphs


def test_plain_model_after_tuned_ones(attention, nodes, torch_compile_node, monkeypatch):
    """A compiled plain run of the same network after a tuned one: ComfyUI's own failure where it drops
    guards (FreeU's too: docs/comfyui-host-states.md); a neutral Skip Tuning node is the workaround."""
    base = ch.build_tiny_unet("sd1")
    tuned = nodes.apply_skip_tuning(base, 0.7, 1.0)
    plain_eager = ch.sample(base, steps=STEPS)
    ch.sample(compiled(torch_compile_node, tuned), steps=STEPS)
    compiled_plain = compiled(torch_compile_node, base)
    if node_drops_transformer_options_guards(torch_compile_node, monkeypatch):
        with pytest.raises(KeyError, match="patches"):
            ch.sample(compiled_plain, steps=STEPS)
    else:
        assert_same_sample(ch.sample(compiled_plain, steps=STEPS), plain_eager)
    neutral = compiled(torch_compile_node, nodes.apply_skip_tuning(base, 1.0, 1.0))
    assert_same_sample(ch.sample(neutral, steps=STEPS), plain_eager)


def test_patch_added_after_a_compiled_plain_run(attention, nodes, torch_compile_node, monkeypatch):
    """Where the node drops guards and the U-Net is one graph, a tuned model compiled after a plain one
    replays the plain graph: ComfyUI drops the patch, FreeU's alike (docs/comfyui-host-states.md)."""
    from comfy_extras.nodes_freelunch import FreeU

    base = ch.build_tiny_unet("sd1")
    tuned = nodes.apply_skip_tuning(base, 0.7, 1.0)
    freeu_result = FreeU.execute(base, b1=1.3, b2=1.4, s1=0.9, s2=0.2) if not hasattr(FreeU, "patch") else \
        FreeU().patch(base, b1=1.3, b2=1.4, s1=0.9, s2=0.2)
    with_freeu = freeu_result.result[0] if hasattr(freeu_result, "result") else freeu_result[0]
    plain = ch.sample(compiled(torch_compile_node, base), steps=STEPS)
    tuned_out = ch.sample(compiled(torch_compile_node, tuned), steps=STEPS)
    freeu_out = ch.sample(compiled(torch_compile_node, with_freeu), steps=STEPS)
    if attention == "one_graph" and node_drops_transformer_options_guards(torch_compile_node, monkeypatch):
        assert torch.equal(tuned_out, plain) and torch.equal(freeu_out, plain)
    else:
        assert_same_sample(tuned_out, ch.sample(tuned, steps=STEPS))
        assert_same_sample(freeu_out, ch.sample(with_freeu, steps=STEPS))
