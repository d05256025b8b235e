"""The core's description of where skips are, and the U-ViT replace patches, without any host."""

import pytest
import torch
from torch import nn

from skip_tuning import (
    DIT_REPLACE_PATCH,
    OUTPUT_BLOCK_PATCH,
    find_skip_layout,
    make_skip_replace_patch,
    make_skip_replace_wrapper,
)


class Block(nn.Module):
    def __init__(self, takes_skip):
        super().__init__()
        self.skip_linear = nn.Linear(2, 1) if takes_skip else None


def u_vit(class_name, depth, takes_skip=None):
    """A module with the structure ComfyUI's U-ViT classes have, under their class name."""
    takes_skip = takes_skip or (lambda index: index > depth // 2)
    cls = type(class_name, (nn.Module,), {})
    network = cls()
    network.depth = depth
    network.blocks = nn.ModuleList(Block(takes_skip(index)) for index in range(depth))
    return network


class ToyUNet(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.input_blocks = nn.ModuleList(nn.Conv2d(4, 4, 1) for _ in range(n))
        self.output_blocks = nn.ModuleList(nn.Conv2d(8, 4, 1) for _ in range(n))


def test_unet_layout_uses_output_block_patches():
    layout = find_skip_layout(ToyUNet(12))
    assert (layout.architecture, layout.n_skips, layout.mechanism, layout.replace_keys) == (
        "U-Net", 12, OUTPUT_BLOCK_PATCH, ())


@pytest.mark.parametrize("class_name, depth, kind, n, first", [
    ("HunYuanDiT", 40, "double_block", 19, 21),
    ("HunYuanDiTPlain", 21, "block", 10, 11),
    ("HunYuanDiT", 16, "double_block", 7, 9),
])
def test_u_vit_layouts_list_the_consuming_blocks_deepest_first(class_name, depth, kind, n, first):
    layout = find_skip_layout(u_vit(class_name, depth))
    assert layout.mechanism == DIT_REPLACE_PATCH and layout.n_skips == n
    assert layout.replace_keys == tuple((kind, first + i) for i in range(n))
    assert layout.replace_keys[-1] == (kind, depth - 1)


def test_networks_without_long_skips_or_wired_differently_have_no_layout():
    assert find_skip_layout(None) is None
    assert find_skip_layout(nn.Linear(2, 2)) is None
    assert find_skip_layout(u_vit("Flux", 40)) is None  # a class the core does not know
    assert find_skip_layout(u_vit("HunYuanDiT", 40, lambda index: index > 25)) is None
    assert find_skip_layout(u_vit("HunYuanDiT", 40, lambda index: False)) is None


def original_block(args):
    return {"img": args["img"] + args["skip"]}


def test_replace_patch_scales_the_skip_out_of_place_and_keeps_the_dtype():
    skip = torch.randn(2, 3, 4).to(torch.bfloat16)
    img = torch.randn(2, 3, 4).to(torch.bfloat16)
    args = {"img": img, "skip": skip}
    out = make_skip_replace_patch(0.8)(args, {"original_block": original_block})
    assert out["img"].dtype == torch.bfloat16
    assert torch.equal(out["img"], img + skip * 0.8)
    assert args["skip"] is skip, "the caller's args are not changed"


def test_replace_patch_runs_the_previous_patch_with_the_scaled_skip():
    seen = []

    def previous(args, extra):
        seen.append(args["skip"])
        return extra["original_block"](args)

    skip = torch.randn(3)
    make_skip_replace_patch(0.5, previous)({"img": torch.zeros(3), "skip": skip}, {"original_block": original_block})
    assert torch.equal(seen[0], skip * 0.5)


def test_replace_patch_keeps_the_controlnet_residual_whole():
    skip, residual = torch.randn(4), torch.randn(4)
    out = make_skip_replace_patch(0.5, control_residual=residual)(
        {"img": torch.zeros(4), "skip": skip + residual}, {"original_block": original_block})
    torch.testing.assert_close(out["img"], skip * 0.5 + residual)


def fake_network(transformer_options, keys, skips):
    """What the U-ViT does with its replace patches: each consuming block runs its slot's patch."""
    dit = transformer_options.get("patches_replace", {}).get("dit", {})
    received = []
    for key, skip in zip(keys, skips):
        def block(args):
            received.append(args["skip"])
            return {"img": args["img"]}
        patch = dit.get(key)
        (patch(dict(img=torch.zeros(1), skip=skip), {"original_block": block}) if patch
         else block({"img": torch.zeros(1), "skip": skip}))
    return received


def call(wrapper, keys, skips, sigma, transformer_options=None, control=None):
    options = transformer_options if transformer_options is not None else {}

    def executor(x, t, c_concat, c_crossattn, control, transformer_options):
        return fake_network(transformer_options, keys, skips)

    return wrapper(executor, None, torch.tensor([sigma]), None, None, control, options)


KEYS = [("double_block", 21), ("double_block", 22), ("double_block", 23)]
SKIPS = [torch.full((2,), 1.0), torch.full((2,), 2.0), torch.full((2,), 3.0)]


def test_wrapper_scales_each_skip_for_the_call_and_leaves_the_options_alone():
    options = {"patches_replace": {"dit": {}}}
    before = repr(options)
    received = call(make_skip_replace_wrapper(KEYS, (0.5, 1.0, 2.0)), KEYS, SKIPS, 1.0, options)
    assert [r.tolist() for r in received] == [[0.5, 0.5], [2.0, 2.0], [6.0, 6.0]]
    assert repr(options) == before


def test_wrapper_honours_the_window_and_the_control_residuals():
    wrapper = make_skip_replace_wrapper(KEYS, (0.5, 0.5, 0.5), sigma_range=(1.0, 5.0))
    assert [r.tolist()[0] for r in call(wrapper, KEYS, SKIPS, 10.0)] == [1.0, 2.0, 3.0]
    assert [r.tolist()[0] for r in call(wrapper, KEYS, SKIPS, 5.0)] == [0.5, 1.0, 1.5]
    # ComfyUI's per-call sigmas, where present, are what is judged.
    assert [r.tolist()[0] for r in call(wrapper, KEYS, SKIPS, 3.0, {"sigmas": torch.tensor([0.5])})] == [
        1.0, 2.0, 3.0]
    # Skip i receives residuals[-1 - i]; kept whole, it is not scaled.
    residuals = [torch.full((2,), 0.3), torch.full((2,), 0.2), torch.full((2,), 0.1)]
    keep = make_skip_replace_wrapper(KEYS, (0.5, 0.5, 0.5), scale_control=False)
    received = call(keep, KEYS, SKIPS, 1.0, control={"output": residuals})
    expected = [skip * 0.5 + residual * 0.5 for skip, residual in zip(SKIPS, reversed(residuals))]
    for got, want in zip(received, expected):
        torch.testing.assert_close(got, want)


def test_wrapper_wraps_a_patch_registered_on_the_same_block():
    log = []

    def foreign(args, extra):
        log.append(args["skip"].tolist()[0])
        return extra["original_block"](args)

    options = {"patches_replace": {"dit": {KEYS[0]: foreign}}}
    received = call(make_skip_replace_wrapper(KEYS, (0.5, 1.0, 1.0)), KEYS, SKIPS, 1.0, options)
    assert log == [0.5] and received[0].tolist()[0] == 0.5
    assert options["patches_replace"]["dit"] == {KEYS[0]: foreign}


def test_wrapper_checks_its_factor_count():
    with pytest.raises(ValueError, match="2 factors for 3 skips"):
        make_skip_replace_wrapper(KEYS, (0.5, 1.0))
