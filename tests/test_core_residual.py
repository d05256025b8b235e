"""Residual Tuning's core (skip_tuning/residual.py): factors per block, the replace patch, and the
patch inside ComfyUI's real Flux class, where each block's identity path must come out scaled by its rho."""

import pytest
import torch

from skip_tuning import (
    SkipTuningError,
    block_factors,
    find_residual_layout,
    make_residual_replace_patch,
    with_residual_replace_patches,
)


def test_block_factors_interpolate_over_depth():
    assert block_factors(5, 0.8, 1.0) == pytest.approx((0.8, 0.85, 0.9, 0.95, 1.0))
    assert block_factors(3, 1.1, 1.1) == (1.1, 1.1, 1.1)
    assert block_factors(1, 0.9, 1.0) == (0.9,)


def test_block_factors_leave_the_first_part_of_the_depth_alone():
    assert block_factors(12, 0.95, 0.95, start_fraction=0.5) == (1.0,) * 6 + (0.95,) * 6
    assert block_factors(4, 0.9, 1.0, start_fraction=0.5) == pytest.approx((1.0, 1.0, 0.9, 1.0))


@pytest.mark.parametrize("args", [(0, 0.9, 1.0), (4, -0.1, 1.0), (4, 0.9, 2.5), (4, 0.9, 1.0, 1.0),
                                  (4, float("nan"), 1.0)])
def test_block_factors_reject_bad_input(args):
    with pytest.raises(SkipTuningError):
        block_factors(*args)


def in_place_block(args):
    """A residual block that, like Flux's single-stream block, adds F(x) to its input in place."""
    x = args["img"]
    x += torch.tanh(x) + 1.0
    return {"img": x}


@pytest.mark.parametrize("rho", [0.0, 0.7, 1.3])
def test_the_patch_gives_rho_x_plus_f_x_even_when_the_block_adds_in_place(rho):
    x = torch.randn(2, 5, 8)
    expected = rho * x + torch.tanh(x) + 1.0
    out = make_residual_replace_patch(rho)({"img": x.clone()}, {"original_block": in_place_block})
    torch.testing.assert_close(out["img"], expected)


def test_rho_one_is_bit_identical():
    x = torch.randn(2, 5, 8)
    plain = in_place_block({"img": x.clone()})["img"]
    tuned = make_residual_replace_patch(1.0)({"img": x.clone()}, {"original_block": in_place_block})["img"]
    assert torch.equal(plain, tuned)


def test_bf16_stays_bf16():
    x = torch.randn(2, 5, 8).to(torch.bfloat16)
    out = make_residual_replace_patch(0.9)({"img": x}, {"original_block": lambda a: {"img": a["img"] * 2}})
    assert out["img"].dtype == torch.bfloat16


def test_the_patch_keeps_what_held_the_slot_and_the_other_outputs():
    calls = []

    def foreign(args, extra):
        calls.append(args["img"].clone())
        out = extra["original_block"](args)
        return {**out, "txt": torch.zeros(1)}

    options = {"patches_replace": {"dit": {("double_block", 1): foreign}}, "other": 1}
    tuned = with_residual_replace_patches(options, [("double_block", 0), ("double_block", 1)], [1.0, 0.5])
    assert ("double_block", 0) not in tuned["patches_replace"]["dit"]  # a factor of 1 adds nothing
    assert options["patches_replace"]["dit"] == {("double_block", 1): foreign}  # the input is not mutated
    x = torch.randn(3, 4)
    out = tuned["patches_replace"]["dit"][("double_block", 1)]({"img": x.clone()}, {"original_block": in_place_block})
    assert len(calls) == 1 and torch.equal(calls[0], x)
    torch.testing.assert_close(out["img"], 0.5 * x + torch.tanh(x) + 1.0)
    assert "txt" in out and tuned["other"] == 1


def test_factor_count_must_match():
    with pytest.raises(ValueError):
        with_residual_replace_patches({}, [("single_block", 0)], [0.9, 0.9])


def test_networks_without_a_known_residual_layout_have_none():
    assert find_residual_layout(None) is None
    assert find_residual_layout(torch.nn.Linear(2, 2)) is None


# -- inside ComfyUI's Flux --------------------------------------------------------------------------------

TINY_FLUX = dict(in_channels=4, out_channels=4, vec_in_dim=16, context_in_dim=16, hidden_size=48, mlp_ratio=2.0,
                 num_heads=2, depth=2, depth_single_blocks=3, axes_dim=[8, 8, 8], theta=10000, patch_size=2,
                 qkv_bias=True, guidance_embed=False)


@pytest.fixture(scope="module")
def flux(comfy):
    from skip_tuning_demo.dit import build_dit
    from skip_tuning_demo.uvit import TorchOps

    torch.manual_seed(0)
    net = build_dit(TINY_FLUX, operations=TorchOps).eval()
    with torch.no_grad():
        for param in net.parameters():
            param.normal_(0.0, 0.05)
    return net


def flux_forward(net, options):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    context = torch.randn(2, 3, 16, generator=gen)
    with torch.no_grad():
        return net(x, torch.tensor([0.3, 0.7]), context, y=context.mean(1), transformer_options=options)


def test_flux_layout_lists_double_then_single_blocks(flux):
    layout = find_residual_layout(flux)
    assert layout.architecture == "Flux"
    assert layout.block_keys == (("double_block", 0), ("double_block", 1), ("single_block", 0),
                                 ("single_block", 1), ("single_block", 2))


def test_flux_at_rho_one_is_bit_identical(flux):
    keys = find_residual_layout(flux).block_keys
    plain = flux_forward(flux, {})
    recorded = {"patches_replace": {"dit": {key: make_residual_replace_patch(1.0) for key in keys}}}
    assert torch.equal(flux_forward(flux, recorded), plain)
    assert torch.equal(flux_forward(flux, with_residual_replace_patches({}, keys, [1.0] * len(keys))), plain)


def test_each_flux_block_identity_path_is_scaled_by_its_rho(flux):
    """A probe registered before the tuning records each block's input and untuned output; the stream that
    leaves the block must be ``rho * input + F(input)`` = ``untuned output - (1 - rho) * input``."""
    keys = find_residual_layout(flux).block_keys
    rhos = [0.9, 1.2, 0.8, 1.0, 0.5]
    seen = {}

    def probe(key):
        def patch(args, extra):
            x = args["img"].clone()
            out = extra["original_block"](args)
            seen[key] = (x, out["img"].clone())
            return out
        return patch

    left = {}
    options = {"patches_replace": {"dit": {key: probe(key) for key in keys}}}
    tuned = with_residual_replace_patches(options, keys, rhos)
    for key in keys:  # an outer recorder sees what leaves each (tuned) block
        inner = tuned["patches_replace"]["dit"][key]

        def outer(args, extra, inner=inner, key=key):
            out = inner(args, extra)
            left[key] = out["img"].clone()
            return out
        tuned["patches_replace"]["dit"][key] = outer
    flux_forward(flux, tuned)
    for key, rho in zip(keys, rhos):
        x, untuned = seen[key]
        torch.testing.assert_close(left[key], untuned - (1.0 - rho) * x, rtol=0, atol=1e-6)
    assert not torch.equal(flux_forward(flux, tuned), flux_forward(flux, {}))
