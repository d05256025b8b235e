"""Unit tests of the U-Net structure readers and the forward pre-hooks (pure torch, a toy U-Net)."""

import logging

import pytest
import torch
from torch import nn

from skip_tuning import SkipScalingHooks, count_long_skips, rho_schedule, skip_channel_plan


class ToyUNet(nn.Module):
    """Encoder convs push skips; decoder block i gets cat([h, skip]) like ldm's UNetModel."""

    def __init__(self, widths=(4, 8, 8, 16)):
        super().__init__()
        self.input_blocks = nn.ModuleList()
        previous = 3
        for width in widths:
            self.input_blocks.append(nn.Sequential(nn.Conv2d(previous, width, 3, padding=1)))
            previous = width
        self.output_blocks = nn.ModuleList()
        for skip in reversed(widths):
            self.output_blocks.append(nn.Sequential(nn.Conv2d(previous + skip, skip, 3, padding=1)))
            previous = skip

    def forward(self, x):
        hs = []
        h = x
        for block in self.input_blocks:
            h = block(h)
            hs.append(h)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1))
        return h


def record_block_inputs(model):
    seen = []
    handles = [block.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
               for block in model.output_blocks]
    return seen, handles


def test_count_long_skips():
    assert count_long_skips(ToyUNet()) == 4
    assert count_long_skips(ToyUNet((4,) * 12)) == 12
    assert count_long_skips(nn.Linear(2, 2)) is None  # Flux, SD3, ... have no output_blocks
    assert count_long_skips(None) is None
    unbalanced = ToyUNet()
    unbalanced.input_blocks.append(nn.Identity())
    assert count_long_skips(unbalanced) is None
    empty = ToyUNet()
    empty.input_blocks, empty.output_blocks = nn.ModuleList(), nn.ModuleList()
    assert count_long_skips(empty) is None


def test_skip_channel_plan_is_deepest_first():
    assert skip_channel_plan(ToyUNet((4, 8, 8, 16))) == (16, 8, 8, 4)
    with pytest.raises(ValueError):
        skip_channel_plan(nn.Linear(2, 2))


def test_hooks_scale_only_the_skip_half():
    torch.manual_seed(0)
    model = ToyUNet().eval()
    x = torch.randn(1, 3, 8, 8)
    rhos = rho_schedule(4, 0.5, 1.0)
    plan = skip_channel_plan(model)

    seen, handles = record_block_inputs(model)
    with torch.no_grad():
        reference = model(x)
    for handle in handles:
        handle.remove()
    plain_inputs = list(seen)

    with SkipScalingHooks(model, rhos) as hooks:
        assert hooks.installed
        seen, handles = record_block_inputs(model)  # registered after ours: sees the scaled input
        with torch.no_grad():
            tuned = model(x)
        for handle in handles:
            handle.remove()
    assert not hooks.installed

    assert not torch.equal(tuned, reference)
    # Block 0 gets the same backbone features either way; compare its skip half exactly.
    width = plan[0]
    assert torch.equal(seen[0][:, :-width], plain_inputs[0][:, :-width])
    assert torch.equal(seen[0][:, -width:], plain_inputs[0][:, -width:] * rhos[0])
    # The top skip has rho 1: no hook at all.
    assert len(hooks.handles) == 0
    with torch.no_grad():
        assert torch.equal(model(x), reference), "removing the hooks restores the model"


def test_hooks_is_active_gate_and_install_twice():
    torch.manual_seed(0)
    model = ToyUNet().eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        reference = model(x)
    active = {"on": False}
    hooks = SkipScalingHooks(model, rho_schedule(4, 0.5, 1.0), is_active=lambda: active["on"])
    hooks.install()
    hooks.install()
    assert len(hooks.handles) == 3
    with torch.no_grad():
        assert torch.equal(model(x), reference)
        active["on"] = True
        assert not torch.equal(model(x), reference)
    hooks.remove()


def test_hooks_reject_wrong_factor_count():
    with pytest.raises(ValueError, match="3 factors for a model with 4 long skips"):
        SkipScalingHooks(ToyUNet(), (0.5, 0.7, 1.0))


def test_hooks_leave_unexpected_widths_alone_and_warn_once(caplog):
    model = ToyUNet().eval()
    hooks = SkipScalingHooks(model, (0.5, 0.5, 0.5, 0.5)).install()
    odd = torch.randn(1, 5, 4, 4)
    with caplog.at_level(logging.WARNING, logger="skip_tuning"):
        for _ in range(2):
            assert hooks.handles  # installed
            result = hooks._hook_for(0)(model.output_blocks[0], (odd,))
            assert result is None
    assert sum("wired differently" in record.message for record in caplog.records) == 1
    hooks.remove()
