"""The latent consistency distillation (skip_tuning_demo.distill) is ComfyUI's LCM sampling, exactly.

The student is only worth measuring through KSampler if its training objective is the function ComfyUI
computes for an LCM model: the same 50 timesteps, the same boundary scalings, the same epsilon-to-x0 map.
"""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")

from skip_tuning_demo import distill  # noqa: E402

HAVE_DEMO_DEPS = all(importlib.util.find_spec(m) is not None for m in ("ldm", "safetensors", "einops", "omegaconf"))


def _alphas_cumprod():
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def _comfy_lcm_sampling():
    import comfy.model_sampling
    from comfy_extras.nodes_model_advanced import LCM, ModelSamplingDiscreteDistilled

    class Sampling(ModelSamplingDiscreteDistilled, LCM):
        pass

    return Sampling(None), comfy.model_sampling


def test_grid_and_boundary():
    grid = distill.lcm_grid_timesteps()
    assert grid.tolist() == list(range(19, 1000, 20))
    c_skip, c_out = distill.boundary_scalings(torch.tensor([0, 19, 999]))
    assert c_skip[0] == 1.0 and c_out[0] == 0.0  # f is the identity at t = 0
    assert c_skip[1] < 1e-5 and c_out[1] == pytest.approx(1.0, abs=1e-5)


def test_ddim_step_with_the_true_noise_lands_on_the_forward_process():
    ac = _alphas_cumprod()
    x0, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t, prev = torch.tensor([999, 519, 19]), torch.tensor([979, 499, -1])
    a, a_prev = ac[t].view(-1, 1, 1, 1), ac[prev.clamp(min=0)].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    expected = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    torch.testing.assert_close(distill.ddim_step(x_t, eps, t, prev, ac), expected, rtol=1e-4, atol=1e-4)


def test_loss_trains_the_student_only():
    ac = _alphas_cumprod()
    nets = [torch.nn.Conv2d(4, 4, 1) for _ in range(3)]

    def as_eps_net(conv):
        return lambda x, t, labels: conv(x)

    student, target, teacher = (as_eps_net(n) for n in nets)
    loss = distill.lcm_distillation_loss(
        student, target, teacher, torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8), torch.tensor([0, 1, 2, 10]),
        torch.tensor([0, 10, 30, 49]), ac, guidance=4.0, null_index=10, huber_c=0.001,
    )
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    assert nets[0].weight.grad is not None
    assert nets[1].weight.grad is None and nets[2].weight.grad is None


def test_consistency_output_is_comfyuis_lcm_denoiser(comfy):
    """The training target's f(x, t) equals ComfyUI's LCM calculate_denoised on its own sigmas and inputs."""
    sampling, _ = _comfy_lcm_sampling()
    ac = _alphas_cumprod()
    sigmas = sampling.sigmas  # the 50 distilled sigmas, ascending
    timesteps = sampling.timestep(sigmas)
    assert timesteps.tolist() == distill.lcm_grid_timesteps().tolist()

    gen = torch.Generator().manual_seed(0)
    x_vp = torch.randn(len(sigmas), 4, 8, 8, generator=gen)
    eps = torch.randn(len(sigmas), 4, 8, 8, generator=gen)
    x_ve = x_vp / ac[timesteps].sqrt().view(-1, 1, 1, 1)
    # ComfyUI feeds the network c_in * x_ve, which is the VP sample the student was trained on.
    torch.testing.assert_close(sampling.calculate_input(sigmas, x_ve), x_vp, rtol=1e-4, atol=1e-5)
    expected = sampling.calculate_denoised(sigmas, eps, x_ve)
    actual = distill.consistency_output(x_vp, eps, timesteps, ac)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not HAVE_DEMO_DEPS, reason="the demo model needs ldm, safetensors, einops and omegaconf")
def test_shipped_student_is_an_lcm_model_of_the_bundled_unet():
    from skip_tuning_demo import model as dm

    config = dm.load_config(os.path.join(dm.LCM_UNET_DIR, "fashion_unet.json"))
    teacher = dm.load_config()
    assert config["unet_kwargs"] == teacher["unet_kwargs"]
    assert "latent consistency distillation" in config["training"]["objective"]
    assert "lcm" in config["training"]["objective"]
    weights = os.path.join(dm.LCM_UNET_DIR, config["weights_file"])
    assert os.path.getsize(weights) < 10 * 1024 * 1024
    unet, table, _ = dm.load_demo_model(weights_dir=dm.LCM_UNET_DIR)
    _, teacher_table, _ = dm.load_demo_model()
    assert torch.equal(table, teacher_table)  # the class prompts are the teacher's, frozen
    assert len(unet.output_blocks) == 12
    json.dumps(config)  # a plain config, as the other models ship


@pytest.mark.skipif(not HAVE_DEMO_DEPS, reason="the demo model needs ldm, safetensors, einops and omegaconf")
def test_student_samples_in_comfyui_as_lcm_and_takes_skip_tuning(comfy):
    """Loaded as ComfyUI loads an LCM model (ModelSamplingDiscrete "lcm", sampler lcm), tuned by the node."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    from _comfy_demo import comfy_sample_latents, lcm_sampling, load_demo_in_comfy, skip_tuned

    from skip_tuning_demo import model as dm

    patcher, _, table, _ = load_demo_in_comfy(dm.LCM_UNET_DIR)
    lcm = lcm_sampling(patcher)
    assert lcm.get_model_object("model_sampling").sigmas.shape[0] == 50
    noise = torch.randn(4, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    labels = [0, 1, 7, 9]
    plain = comfy_sample_latents(lcm, table, labels, "lcm", 4, 1.0, noise, seed=1)
    again = comfy_sample_latents(skip_tuned(lcm, 1.0), table, labels, "lcm", 4, 1.0, noise, seed=1)
    tuned = comfy_sample_latents(skip_tuned(lcm, 0.7), table, labels, "lcm", 4, 1.0, noise, seed=1)
    assert torch.isfinite(plain).all() and plain.abs().max() < 3
    assert torch.equal(plain, again)
    assert not torch.equal(plain, tuned)
