"""Stand-in of modules.processing and the k-diffusion sampler, in the order A1111 1.10 runs them.

process_images: scripts.process -> per batch: process_batch -> p.sample() -> postprocess_batch
-> infotext; then postprocess (skipped when an exception escapes, as in the webui). txt2img's
sample() creates the sampler, calls process_before_every_sampling, then sampler.sample(); with
hires fix it (optionally) loads another checkpoint, creates a new sampler, sets is_hr_pass and
calls before_hr and process_before_every_sampling again before sampler.sample_img2img().
A runner without process_before_every_sampling stands for A1111 1.9 and older, which never call
it (the rest of their order is the same). img2img creates its
sampler once in init() and reuses it for every batch. The sampler's CFG denoiser counts its
calls in ``step`` against ``total_steps``; interrupts/skips raise InterruptedException inside
it and launch_sampling returns the last latent.

The "sampling" is a toy update with the real U-Net (``sd_model.model.diffusion_model``):
what matters here is which U-Net calls happen while the hooks are attached.
"""

from __future__ import annotations

import copy

import torch
from modules import shared
from modules.sd_samplers_common import InterruptedException

step_callbacks: list = []  # test hooks: fn(p, sampler, step) after each denoiser call
CONTEXT_DIM = 16


class SdModel:
    """What the script reaches: sd_model.model.diffusion_model (ldm's DiffusionWrapper layout)."""

    def __init__(self, diffusion_model, name="model"):
        self.model = torch.nn.Module()
        self.model.diffusion_model = diffusion_model
        self.name = name


class CFGDenoiser:
    def __init__(self):
        self.step = 0
        self.total_steps = None


class KDiffusionSampler:
    def __init__(self, p):
        self.model_wrap_cfg = CFGDenoiser()
        self.calls = []  # (is_hr_pass, step) of every U-Net call

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        return self.launch_sampling(p, x, steps or p.steps)

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None,
                       image_conditioning=None):
        return self.launch_sampling(p, x + 0.5 * noise, steps or p.steps)

    def launch_sampling(self, p, x, steps):
        denoiser = self.model_wrap_cfg
        denoiser.step = 0
        denoiser.total_steps = steps
        shared.state.sampling_steps = steps
        shared.state.sampling_step = 0
        try:
            for index in range(steps):
                if shared.state.interrupted or shared.state.skipped:
                    raise InterruptedException
                diffusion_model = p.sd_model.model.diffusion_model  # resolved per call, like the wrapper
                t = torch.full((x.shape[0],), 999.0 * (1 - index / steps))
                self.calls.append((p.is_hr_pass, denoiser.step))
                out = diffusion_model(torch.cat([x, x]), torch.cat([t, t]), context=torch.cat([p.c, p.uc]))
                cond, uncond = out.chunk(2)
                x = x - 0.1 * (uncond + p.cfg_scale * (cond - uncond))
                denoiser.step += 1
                shared.state.sampling_step = index
                for callback in list(step_callbacks):
                    callback(p, self, index)
        except InterruptedException:
            return x
        return x


class Processed:
    def __init__(self, p, images, infotexts):
        self.images = images
        self.infotexts = infotexts
        self.info = infotexts[0] if infotexts else ""


class StableDiffusionProcessing:
    def __init__(self, sd_model=None, steps=4, cfg_scale=5.0, width=64, height=64, seed=0, n_iter=1,
                 batch_size=1, scripts=None, script_args=None, prompt="a prompt"):
        if sd_model is not None:
            shared.sd_model = sd_model
        self.steps, self.cfg_scale, self.width, self.height = steps, cfg_scale, width, height
        self.seed, self.n_iter, self.batch_size, self.prompt = seed, n_iter, batch_size, prompt
        self.scripts, self.script_args = scripts, list(script_args or [])
        self.extra_generation_params = {}
        self.sampler = None
        self.is_hr_pass = False
        self.refiner_checkpoint_info = None
        self.iteration = 0
        self.c = self.uc = None

    @property
    def sd_model(self):
        return shared.sd_model

    def latent_shape(self):
        return (self.batch_size, 4, self.height // 8, self.width // 8)

    def init(self):
        generator = torch.Generator().manual_seed(self.seed + 1)
        self.c = torch.randn(self.batch_size, 3, CONTEXT_DIM, generator=generator)
        self.uc = torch.randn(self.batch_size, 3, CONTEXT_DIM, generator=generator)

    def noise(self, shape=None):
        generator = torch.Generator().manual_seed(self.seed + self.iteration)
        return torch.randn(shape or self.latent_shape(), generator=generator)

    def close(self):
        self.sampler = None


def before_every_sampling(p, **kwargs):
    if p.scripts is not None and hasattr(p.scripts, "process_before_every_sampling"):
        p.scripts.process_before_every_sampling(p, **kwargs)


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    def __init__(self, enable_hr=False, hr_second_pass_steps=0, hr_checkpoint=None, **kwargs):
        super().__init__(**kwargs)
        self.enable_hr = enable_hr
        self.hr_second_pass_steps = hr_second_pass_steps
        self.hr_checkpoint = hr_checkpoint  # an SdModel to load for the hires pass

    def sample(self):
        self.sampler = KDiffusionSampler(self)
        x = self.noise()
        before_every_sampling(self, x=x, noise=x, c=self.c, uc=self.uc)
        samples = self.sampler.sample(self, x, self.c, self.uc, image_conditioning=None)
        if not self.enable_hr:
            return samples
        if shared.state.interrupted:
            return samples
        if self.hr_checkpoint is not None:
            shared.sd_model = self.hr_checkpoint
        self.is_hr_pass = True
        self.sampler = KDiffusionSampler(self)
        samples = torch.nn.functional.interpolate(samples, scale_factor=2, mode="nearest")
        noise = self.noise(samples.shape)
        if self.scripts is not None:
            self.scripts.before_hr(self)
        before_every_sampling(self, x=samples, noise=noise, c=self.c, uc=self.uc)
        samples = self.sampler.sample_img2img(self, samples, noise, self.c, self.uc,
                                              steps=self.hr_second_pass_steps or self.steps)
        self.sampler = None
        self.is_hr_pass = False
        return samples


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    def __init__(self, init_latent=None, **kwargs):
        super().__init__(**kwargs)
        self.init_latent = init_latent

    def init(self):
        super().init()
        self.sampler = KDiffusionSampler(self)  # created once, reused for every batch
        if self.init_latent is None:
            self.init_latent = torch.zeros(self.latent_shape())

    def sample(self):
        x = self.noise()
        before_every_sampling(self, x=self.init_latent, noise=x, c=self.c, uc=self.uc)
        return self.sampler.sample_img2img(self, self.init_latent, x, self.c, self.uc)


def quote(text):
    text = str(text)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    import json

    return json.dumps(text, ensure_ascii=False)


def create_infotext(p):
    params = {"Steps": p.steps, "CFG scale": p.cfg_scale, "Seed": p.seed, "Size": f"{p.width}x{p.height}"}
    params.update(p.extra_generation_params)
    line = ", ".join(f"{key}: {quote(value)}" for key, value in params.items() if value is not None)
    return f"{p.prompt}\n{line}"


def process_images(p):
    """The webui's process_images_inner, reduced to the script hooks and the sampling."""
    if p.scripts is not None:
        p.scripts.process(p)
    p.init()
    samples, infotexts = [], []
    for n in range(p.n_iter):
        p.iteration = n
        if shared.state.interrupted:
            break
        if p.scripts is not None:
            p.scripts.process_batch(p, batch_number=n)
        batch = p.sample()
        if p.scripts is not None:
            p.scripts.postprocess_batch(p, batch, batch_number=n)
        samples.append(batch)
        infotexts.append(create_infotext(p))
    processed = Processed(p, samples, infotexts)
    if p.scripts is not None:
        p.scripts.postprocess(p, processed)
    return processed


def copy_for_cell(p):
    """What the X/Y/Z plot does per cell: a shallow copy (extra_generation_params stays shared)."""
    return copy.copy(p)
