"""Cheap checks of the shipped Fashion-MNIST demo model (skip_tuning_demo)."""

import importlib.util
import os

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")

if importlib.util.find_spec("ldm") is None:
    pytest.skip("the ldm UNetModel (pip install stable-diffusion-sdkit) is not installed", allow_module_level=True)
for _mod in ("safetensors", "einops", "omegaconf"):
    if importlib.util.find_spec(_mod) is None:
        pytest.skip(f"{_mod} is not installed (needed by the demo model)", allow_module_level=True)

from skip_tuning_demo import model as dm  # noqa: E402

HAVE_DIFFUSERS = importlib.util.find_spec("diffusers") is not None


@pytest.fixture(scope="module")
def demo():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return dm.load_demo_model()


def test_config_loads():
    cfg = dm.load_config()
    assert cfg["unet_kwargs"]["in_channels"] == 4
    assert cfg["unet_kwargs"]["out_channels"] == 4
    assert cfg["unet_kwargs"]["context_dim"] == cfg["conditioning"]["context_dim"]
    assert cfg["schedule"]["beta_schedule"] == "scaled_linear"
    assert cfg["schedule"]["beta_start"] == pytest.approx(0.00085)
    assert cfg["schedule"]["beta_end"] == pytest.approx(0.012)
    assert cfg["schedule"]["num_train_timesteps"] == 1000
    assert cfg["schedule"]["prediction_type"] == "epsilon"
    assert cfg["class_names"] == list(dm.CLASS_NAMES)
    assert cfg["latent"]["latent_channels"] == 4


def test_weights_load_strict(demo):
    from safetensors.torch import load_file

    unet, table, cfg = demo
    assert len(unet.output_blocks) == 12
    assert len(unet.input_blocks) == 12
    sd = load_file(dm.UNET_WEIGHTS)
    # exact ldm / ComfyUI key set, no prefix, nothing extra
    assert set(sd) == set(unet.state_dict())
    assert "input_blocks.0.0.weight" in sd and "out.2.weight" in sd
    assert table.shape == (
        dm.NUM_CLASSES + 1,
        cfg["conditioning"]["context_tokens"],
        cfg["conditioning"]["context_dim"],
    )
    assert os.path.getsize(dm.UNET_WEIGHTS) < 10 * 1024 * 1024


def test_forward_shape(demo):
    unet, table, _ = demo
    x = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        out = unet(x, torch.tensor([999.0, 10.0]), context=dm.context_for([1, dm.NULL_INDEX], table))
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_pack_unpack_round_trip():
    img = torch.rand(3, 1, 32, 32) * 2 - 1
    lat = dm.pack_images(img)
    assert lat.shape == (3, 4, 16, 16)
    assert torch.equal(dm.unpack_latents(lat), img)


def test_context_helpers(demo):
    _, table, _ = demo
    assert dm.context_for([0, 9], table).shape == (2,) + tuple(table.shape[1:])
    assert torch.equal(dm.null_context(3, table)[2], table[dm.NULL_INDEX])
    with pytest.raises(ValueError):
        dm.context_for([11], table)


@pytest.mark.skipif(not HAVE_DIFFUSERS, reason="diffusers is not installed (needed for sampling)")
@pytest.mark.parametrize("name", ["dpmpp_2m", "euler_a"])
def test_tiny_sampling_call(demo, name):
    from skip_tuning_demo.sampling import make_noise, sample

    unet, table, _ = demo
    noise = make_noise(2, seed=0)
    imgs = sample(unet, table, [0, 7], name, steps=2, cfg=3.0, noise=noise)
    again = sample(unet, table, [0, 7], name, steps=2, cfg=3.0, noise=noise)
    assert imgs.shape == (2, 1, 32, 32)
    assert imgs.min() >= -1 and imgs.max() <= 1
    assert torch.equal(imgs, again)  # seeded: common random numbers reproduce exactly


@pytest.mark.skipif(not HAVE_DIFFUSERS, reason="diffusers is not installed (needed for sampling)")
def test_scheduler_uses_model_schedule():
    from skip_tuning_demo.sampling import SCHEDULER_NAMES, make_scheduler

    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    for name in SCHEDULER_NAMES:
        sch = make_scheduler(name)
        assert torch.allclose(sch.betas.double(), betas, atol=1e-7), name


@pytest.mark.skipif(not HAVE_DIFFUSERS, reason="diffusers is not installed (needed for sampling)")
@pytest.mark.parametrize("steps", [4, 6, 10, 25])
def test_ddim_evaluates_the_model_where_its_steps_land(steps):
    """DDIMScheduler.step jumps by 1000 // steps: its timesteps must be spaced that far, from t = 999."""
    from skip_tuning_demo.sampling import make_scheduler

    scheduler = make_scheduler("ddim")
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps.tolist()
    assert timesteps[0] == 999 and len(timesteps) == steps
    jump = 1000 // steps
    assert all(abs((a - b) - jump) <= 1 for a, b in zip(timesteps, timesteps[1:])), timesteps


@pytest.mark.skipif(not HAVE_DIFFUSERS, reason="diffusers is not installed (needed for sampling)")
def test_samples_are_garments_of_the_requested_class(demo):
    """The shipped weights make what the demo claims: the classifier recognises the requested class."""
    from skip_tuning_demo.metrics import classifier_accuracy
    from skip_tuning_demo.sampling import sample

    unet, table, _ = demo
    labels = torch.arange(40) % 10
    images = sample(unet, table, labels, "dpmpp_2m", steps=20, cfg=4.0, seed=7)
    assert classifier_accuracy(images, labels) >= 0.7
