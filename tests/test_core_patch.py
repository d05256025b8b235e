"""Unit tests of the output-block patch and the ControlNet snapshot wrapper (pure torch)."""

import copy
import math

import pytest
import torch

from skip_tuning import (
    CONTROL_OUTPUTS_KEY,
    SamplingWindow,
    control_snapshot_wrapper,
    make_output_block_patch,
    rho_schedule,
)
from skip_tuning.patch import apply_model_wrapper


def options(index, sigma=None, **extra):
    out = {"block": ("output", index), **extra}
    if sigma is not None:
        out["sigmas"] = torch.tensor([sigma, sigma], dtype=torch.float32)
    return out


def tensors(seed=0, dtype=torch.float32, shape=(2, 8, 4, 4)):
    generator = torch.Generator().manual_seed(seed)
    h = torch.randn(shape, generator=generator).to(dtype)
    hsp = torch.randn(shape, generator=generator).to(dtype)
    return h, hsp


@pytest.mark.parametrize("n", [12, 9, 6, 1])
def test_each_block_gets_its_own_factor(n):
    rhos = rho_schedule(n, 0.6, 1.2)
    patch = make_output_block_patch(rhos)
    for i in range(n):
        h, hsp = tensors(i)
        before = hsp.clone()
        new_h, new_hsp = patch(h, hsp, options(i))
        assert new_h is h
        assert torch.equal(new_hsp, before * rhos[i])
        assert torch.equal(hsp, before), "the input skip must not be modified"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtype_is_kept_and_product_is_plain_scalar_multiply(dtype):
    patch = make_output_block_patch((0.73, 1.0))
    h, hsp = tensors(1, dtype)
    _, out = patch(h, hsp, options(0))
    assert out.dtype == dtype
    assert torch.equal(out, hsp * 0.73)


def test_rho_one_returns_the_same_tensors():
    patch = make_output_block_patch((1.0, 1.0, 1.0), sigma_range=(1.0, 5.0))
    h, hsp = tensors()
    for i in range(3):
        new_h, new_hsp = patch(h, hsp, options(i, sigma=2.0))
        assert new_h is h and new_hsp is hsp


def test_no_middle_block_alias_is_not_written_through():
    # U-Nets without a middle block hand the same tensor as h and hsp to output block 0.
    patch = make_output_block_patch((0.5, 1.0))
    h, _ = tensors()
    before = h.clone()
    new_h, new_hsp = patch(h, h, options(0))
    assert new_h is h
    assert torch.equal(h, before)
    assert torch.equal(new_hsp, before * 0.5)
    assert new_hsp.data_ptr() != h.data_ptr()


@pytest.mark.parametrize("to", [
    {"block": ("input", 0)},
    {"block": ("middle", 0)},
    {"block": ("output", 5)},
    {"block": ("output", -1)},
    {},
])
def test_other_blocks_are_left_alone(to):
    patch = make_output_block_patch((0.5, 0.7))
    h, hsp = tensors()
    assert patch(h, hsp, to) == (h, hsp)


def test_window_gates_on_the_current_sigma_inclusive():
    rho = 0.6
    patch = make_output_block_patch((rho,), sigma_range=(2.0, 8.0))
    h, hsp = tensors()
    for sigma, active in [(14.6, False), (8.0001, False), (8.0, True), (5.0, True), (2.0, True), (1.999, False),
                          (0.0, False)]:
        _, out = patch(h, hsp, options(0, sigma=sigma))
        expected = hsp * rho if active else hsp
        assert torch.equal(out, expected), sigma


def test_window_without_sigmas_in_options_applies_the_factor():
    patch = make_output_block_patch((0.6,), sigma_range=(2.0, 8.0))
    h, hsp = tensors()
    _, out = patch(h, hsp, options(0))
    assert torch.equal(out, hsp * 0.6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gated_product_is_bit_identical_to_the_ungated_one(dtype):
    patch = make_output_block_patch((0.8,), sigma_range=(0.0, 100.0))
    h, hsp = tensors(3, dtype)
    _, out = patch(h, hsp, options(0, sigma=3.0))
    assert out.dtype == dtype
    assert torch.equal(out, hsp * 0.8)


def test_patch_is_a_plain_function_that_survives_deepcopy():
    patch = make_output_block_patch((0.8, 1.0))
    assert copy.deepcopy({"p": [patch]})["p"][0] is patch  # ModelPatcher.clone deep-copies model_options


def test_sigma_changes_do_not_recompile_under_torch_compile():
    dynamo = pytest.importorskip("torch._dynamo")
    from torch._dynamo.testing import CompileCounter

    patch = make_output_block_patch(rho_schedule(12, 0.7, 1.0), sigma_range=(1.0, 6.0))

    def block(h, hsp, sigmas):
        h, hsp = patch(h, hsp, {"block": ("output", 3), "sigmas": sigmas})
        return torch.cat([h, hsp], dim=1)

    counter = CompileCounter()
    dynamo.reset()
    compiled = torch.compile(block, backend=counter, fullgraph=True)  # fullgraph: a graph break is an error
    h, hsp = tensors()
    for sigma in (14.0, 6.0, 3.0, 1.0, 0.5, 0.1):
        out = compiled(h, hsp, torch.tensor([sigma]))
        expected = block(h, hsp, torch.tensor([sigma]))
        assert torch.equal(out, expected)
    assert counter.frame_count == 1
    dynamo.reset()



def drop_transformer_options_guards(guard_entries):
    """The guard filter ComfyUI's TorchCompileModel passes since PR #11317 (December 2025)."""
    return [("transformer_options" not in entry.name) for entry in guard_entries]


def compile_counted(function, guard_filter=None):
    dynamo = pytest.importorskip("torch._dynamo")
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()  # runs each graph as traced: the same kernels as eager, so bit-comparable
    dynamo.reset()
    options = {"guard_filter_fn": guard_filter} if guard_filter else None
    return torch.compile(function, backend=counter, options=options), counter


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_traced_as_its_own_frame_each_block_keeps_its_factor_with_guards_dropped(dtype):
    # ComfyUI's U-Net forward falls back to eager after a graph break (CPU attention, for one), and dynamo
    # then compiles the patch as a frame of its own: same shapes, another block index. Dropping the guard on
    # the index replayed block 0's factor for the others.
    rhos = rho_schedule(6, 0.5, 1.0)
    patch = make_output_block_patch(rhos, sigma_range=(1.0, 6.0))
    compiled, counter = compile_counted(patch, drop_transformer_options_guards)
    h, hsp = tensors(dtype=dtype)
    for sigma in (8.0, 3.0):
        for i in range(6):
            _, out = compiled(h, hsp, options(i, sigma=sigma))
            assert out.dtype == dtype
            assert torch.equal(out, hsp * rhos[i] if sigma <= 6.0 else hsp), (i, sigma)
    assert counter.frame_count <= 6  # at most one graph per block index, none per sigma
    torch._dynamo.reset()


def unet_like(h, hsp, transformer_options):
    """What ComfyUI's U-Net does around the patch, as dynamo inlines it into one graph."""
    outputs = []
    for index in range(3):
        transformer_options["block"] = ("output", index)
        skip = hsp
        for patch in transformer_options["patches"]["output_block_patch"]:
            _, skip = patch(h, skip, transformer_options)
        outputs.append(torch.cat([h, skip], dim=1))
    return torch.stack(outputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_graph_serves_every_factor_and_window_with_guards_dropped(dtype):
    # A second Skip Tuning node (new factors, a window, rho 1 at the top) reuses the graph traced for the
    # first: with its guards dropped, nothing it reads through transformer_options may be frozen in it.
    compiled, counter = compile_counted(unet_like, drop_transformer_options_guards)
    h, hsp = tensors(dtype=dtype)
    models = [
        make_output_block_patch((0.5, 0.7, 0.9)),
        make_output_block_patch((1.2, 0.8, 1.0), sigma_range=(1.0, 6.0)),
        make_output_block_patch((1.0, 1.0, 1.0)),
        make_output_block_patch((0.6, 0.6, 0.6), sigma_range=(0.0, 2.0)),
    ]
    for patch in models:
        for sigma in (8.0, 3.0, 1.5):
            def transformer_options(patch=patch, sigma=sigma):
                return {"patches": {"output_block_patch": [patch]}, "sigmas": torch.tensor([sigma])}

            expected = unet_like(h, hsp, transformer_options())
            assert torch.equal(compiled(h, hsp, transformer_options()), expected), sigma
    assert counter.frame_count == 1
    torch._dynamo.reset()


def test_traced_patch_keeps_the_control_residual_like_the_eager_one():
    rho, n = 0.7, 3
    patch = make_output_block_patch((rho,) * n, scale_control=False)
    compiled, _ = compile_counted(patch)
    residuals = [torch.full((2, 8, 4, 4), float(k + 1)) for k in range(n)]
    for i in range(n):
        h, hsp = tensors(i)
        assert torch.equal(compiled(h, hsp, control_options(i, residuals))[1],
                           patch(h, hsp, control_options(i, residuals))[1])
    torch._dynamo.reset()



class LinearSampling:
    """A model_sampling whose percent_to_sigma is scale * (1 - percent), the way ComfyUI's maps 0 to the top."""

    def __init__(self, scale=10.0):
        self.scale = scale

    def percent_to_sigma(self, percent):
        return self.scale * (10 - round(10 * percent)) / 10  # exact for the tenths used here


class Executor:
    """ComfyUI's WrapperExecutor as a wrapper sees it: ``class_obj`` is the model the call runs."""

    def __init__(self, model_sampling, run):
        self.class_obj = type("Model", (), {"model_sampling": model_sampling})()
        self.run = run

    def __call__(self, *args, **kwargs):
        return self.run(*args, **kwargs)


def test_sampling_window_is_resolved_on_the_model_sampling_of_each_call():
    window = SamplingWindow((2.0, 8.0), percents=(0.2, 0.8))
    patch = make_output_block_patch((0.5,), sigma_range=window)
    h, hsp = tensors()

    def call(model_sampling, sigma):
        return window.apply_model_wrapper(Executor(model_sampling, lambda: patch(h, hsp, options(0, sigma=sigma))[1]))

    assert torch.equal(call(LinearSampling(10.0), 5.0), hsp * 0.5)
    assert torch.equal(call(LinearSampling(10.0), 9.0), hsp)  # above percent_to_sigma(0.2) = 8
    # A ModelSampling node after the tuning node: the same percents, other levels (4 to 16).
    assert torch.equal(call(LinearSampling(20.0), 9.0), hsp * 0.5)
    assert torch.equal(call(LinearSampling(20.0), 3.0), hsp)
    assert window.sigmas == (4.0, 16.0) and window.traced_sigmas.tolist() == [4.0, 16.0]


def test_fixed_and_open_windows_ignore_the_model_sampling():
    fixed, whole = SamplingWindow((2.0, 8.0)), SamplingWindow.open()
    fixed.resolve(LinearSampling(20.0))
    whole.resolve(LinearSampling(20.0))
    assert fixed.sigmas == (2.0, 8.0) and whole.sigmas == (-math.inf, math.inf)


def test_a_window_resolved_in_inference_mode_is_usable_outside_it():
    window = SamplingWindow((2.0, 8.0), percents=(0.2, 0.8))
    with torch.inference_mode():
        window.resolve(LinearSampling(20.0))
    window.resolve(LinearSampling(30.0))
    assert window.traced_sigmas.tolist() == [6.0, 24.0]


def test_a_traced_graph_reads_the_resolved_window_at_every_call():
    window = SamplingWindow((2.0, 8.0), percents=(0.2, 0.8))
    patch = make_output_block_patch((0.5,), sigma_range=window)
    compiled, counter = compile_counted(patch)
    h, hsp = tensors()
    for scale, sigma, active in ((10.0, 9.0, False), (20.0, 9.0, True), (10.0, 9.0, False), (20.0, 3.0, False)):
        window.resolve(LinearSampling(scale))
        assert torch.equal(compiled(h, hsp, options(0, sigma=sigma))[1], hsp * 0.5 if active else hsp)
    assert counter.frame_count == 1
    torch._dynamo.reset()


def test_apply_model_wrapper_resolves_its_window_before_judging_the_call():
    tuned_calls = []
    wrapper = apply_model_wrapper(lambda options, control: {**options, "tuned": True}, True,
                                  SamplingWindow((2.0, 8.0), percents=(0.2, 0.8)))

    def call(model_sampling, sigma):
        def run(x, t, c_concat, c_crossattn, control, transformer_options):
            tuned_calls.append(transformer_options.get("tuned", False))
        executor = Executor(model_sampling, run)
        wrapper(executor, None, torch.tensor([sigma]), None, None, None, {"sigmas": torch.tensor([sigma])})

    call(LinearSampling(10.0), 9.0)
    call(LinearSampling(20.0), 9.0)
    assert tuned_calls == [False, True]


# --- ControlNet ----------------------------------------------------------------------------------------------


def control_options(index, residuals, sigma=None):
    return options(index, sigma=sigma, **{CONTROL_OUTPUTS_KEY: residuals})


def test_scale_control_false_keeps_the_residual_at_full_strength():
    rho = 0.7
    n = 3
    patch = make_output_block_patch((rho,) * n, scale_control=False)
    residuals = [torch.full((2, 8, 4, 4), float(k + 1)) for k in range(n)]
    for i in range(n):
        h, skip = tensors(i)
        residual = residuals[n - 1 - i]  # the host pops from the end
        hsp = skip + residual  # what the host hands over
        _, out = patch(h, hsp, control_options(i, residuals))
        torch.testing.assert_close(out, rho * skip + residual, rtol=1e-6, atol=1e-6)


def test_scale_control_true_scales_the_residual_too():
    patch = make_output_block_patch((0.7,))
    h, hsp = tensors()
    _, out = patch(h, hsp, control_options(0, [torch.ones_like(hsp)]))
    assert torch.equal(out, hsp * 0.7)


def test_control_edge_cases_fall_back_to_plain_scaling():
    patch = make_output_block_patch((0.7, 0.8, 0.9), scale_control=False)
    h, hsp = tensors()
    for residuals in (None, [], [None, None, None], [torch.ones(1, 8, 2, 2)] * 3):
        _, out = patch(h, hsp, control_options(0, residuals))
        assert torch.equal(out, hsp * 0.7)
    # Fewer residuals than skips: the last blocks get none.
    _, out = patch(h, hsp, control_options(2, [torch.ones_like(hsp)]))
    assert torch.equal(out, hsp * 0.9)


def test_control_residual_in_another_dtype_keeps_the_skip_dtype():
    patch = make_output_block_patch((0.5,), scale_control=False)
    h, hsp = tensors(dtype=torch.bfloat16)
    _, out = patch(h, hsp, control_options(0, [torch.ones(hsp.shape, dtype=torch.float32)]))
    assert out.dtype == torch.bfloat16


def test_control_with_window_is_untouched_outside_it():
    patch = make_output_block_patch((0.5,), sigma_range=(1.0, 2.0), scale_control=False)
    h, hsp = tensors()
    residuals = [torch.ones_like(hsp)]
    _, out = patch(h, hsp, control_options(0, residuals, sigma=5.0))
    assert torch.equal(out, hsp)
    _, out = patch(h, hsp, control_options(0, residuals, sigma=1.5))
    torch.testing.assert_close(out, hsp * 0.5 + 0.5)


def test_snapshot_wrapper_records_residuals_for_the_call_only():
    residuals = [torch.zeros(1), torch.ones(1)]
    control = {"input": [], "middle": [], "output": residuals}
    transformer_options = {}
    seen = {}

    def executor(x, timesteps, context, y, control, transformer_options, **kwargs):
        snapshot = transformer_options[CONTROL_OUTPUTS_KEY]
        control["output"].pop()  # what the U-Net does while it runs
        seen["snapshot"] = list(snapshot)
        seen["kwargs"] = kwargs
        return "result"

    out = control_snapshot_wrapper(executor, "x", "t", "ctx", None, control, transformer_options, extra=1)
    assert out == "result"
    assert seen["snapshot"][0] is residuals[0] and len(seen["snapshot"]) == 2
    assert seen["kwargs"] == {"extra": 1}
    assert CONTROL_OUTPUTS_KEY not in transformer_options, "no tensors may outlive the call"


@pytest.mark.parametrize("control", [None, {}, {"output": []}])
def test_snapshot_wrapper_without_control(control):
    def executor(*args, **kwargs):
        return args[5].get(CONTROL_OUTPUTS_KEY, "absent")

    assert control_snapshot_wrapper(executor, 0, 0, None, None, control, {}) is None


def test_snapshot_wrapper_cleans_up_on_errors():
    transformer_options = {}

    def executor(*args, **kwargs):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        control_snapshot_wrapper(executor, 0, 0, None, None, {"output": [torch.ones(1)]}, transformer_options)
    assert CONTROL_OUTPUTS_KEY not in transformer_options
