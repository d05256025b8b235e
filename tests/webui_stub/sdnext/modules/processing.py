"""Stand-in of SD.Next's processing (modules/processing.py, processing_diffusers.py), in SD.Next's order.

process_images: the before_process callbacks, then process_images_inner, then in a ``finally`` the
after_process callbacks. process_images_inner: scripts.process -> p.init() (which may load another model:
``model_on_init``) -> per batch: (interrupted: stop) process_batch -> base pipeline call -> hires pipeline
call (``p.is_hr_pass``) -> refiner pipeline call (``shared.sd_refiner``, its own U-Net) -> (interrupted:
stop, before postprocess_batch) postprocess_batch -> the detailer (process_images_inner on a copy of p);
then postprocess unless interrupted or skipped.

A pipeline call resets the step counter (SD.Next's state.begin), runs its steps (one U-Net call each,
CFG batched) with a toy update, and ends each step as SD.Next's diffusers_callback does: it learns the
step count after the first step, counts the step, and raises AssertionError on an interrupt, which the
caller catches; RuntimeError/ValueError are caught too (marking the job interrupted), anything else
propagates. The U-Nets are real diffusers UNet2DConditionModels.
"""

from __future__ import annotations

import copy

import torch

from modules import script_callbacks, shared
from modules.processing_helpers import is_refiner_enabled

CROSS_DIM = 16
step_callbacks: list = []  # test hooks: fn(p, step) at the end of each step


class Pipeline:
    """Just what a diffusers pipeline is to SD.Next here: a ``unet`` and a sampling loop around it."""

    def __init__(self, unet, name: str = "model"):
        self.unet, self.name = unet, name

    def __call__(self, p, latents, steps):
        shared.state.begin()
        context = p.context(latents.shape[0])
        for step in range(steps):
            t = torch.full((2 * latents.shape[0],), 999.0 * (1 - step / steps))
            out = self.unet(torch.cat([latents, latents]), t, encoder_hidden_states=context).sample
            cond, uncond = out.chunk(2)
            latents = latents - 0.1 * (uncond + p.cfg_scale * (cond - uncond))
            if shared.state.sampling_steps == 0:
                shared.state.sampling_steps = steps
            shared.state.sampling_step += 1
            for callback in list(step_callbacks):
                callback(p, step)
            if shared.state.interrupted or shared.state.skipped:
                raise AssertionError("Interrupted...")
        return latents


class Processed:
    def __init__(self, images, info):
        self.images, self.info = images, info


class StableDiffusionProcessing:
    def __init__(self, scripts=None, script_args=None, steps=2, cfg_scale=5.0, n_iter=1, seed=0, size=8,
                 enable_hr=False, hr_steps=2, refiner_steps=0, refiner_start=0.0, model_on_init=None,
                 detailer=False):
        self.scripts, self.script_args, self.per_script_args = scripts, list(script_args or []), {}
        self.steps, self.cfg_scale, self.n_iter, self.seed, self.size = steps, cfg_scale, n_iter, seed, size
        self.enable_hr, self.hr_steps = enable_hr, hr_steps
        self.refiner_steps, self.refiner_start = refiner_steps, refiner_start
        self.model_on_init, self.detailer = model_on_init, detailer
        self.is_hr_pass = False
        self.iteration = 0
        self.extra_generation_params = {}

    @property
    def sd_model(self):
        return shared.sd_model

    def init(self):
        if self.model_on_init is not None:
            shared.sd_model = self.model_on_init

    def context(self, batch):
        generator = torch.Generator().manual_seed(self.seed + 1)
        return torch.randn(2 * batch, 3, CROSS_DIM, generator=generator)

    def noise(self, size=None):
        generator = torch.Generator().manual_seed(self.seed + self.iteration)
        size = size or self.size
        return torch.randn(1, 4, size, size, generator=generator)


def create_infotext(p):
    return ", ".join(f"{key}: {value}" for key, value in {"Steps": p.steps, **p.extra_generation_params}.items())


def _pipeline_call(pipeline, p, latents, steps):
    try:
        return pipeline(p, latents, steps)
    except AssertionError:  # the interrupt from the step callback
        return latents
    except (ValueError, RuntimeError):
        shared.state.interrupted = True
        return latents


def process_diffusers(p):
    latents = _pipeline_call(shared.sd_model, p, p.noise(), p.steps)
    if shared.state.interrupted or shared.state.skipped:
        return latents
    if p.enable_hr:
        p.is_hr_pass = True
        upscaled = torch.nn.functional.interpolate(latents, scale_factor=2, mode="nearest")
        latents = _pipeline_call(shared.sd_model, p, upscaled + 0.5 * p.noise(2 * p.size), p.hr_steps)
        p.is_hr_pass = False
    if is_refiner_enabled(p):
        latents = _pipeline_call(shared.sd_refiner, p, latents, p.refiner_steps)
    return latents


def detail(p):
    """SD.Next's detailer: its passes run on a copy of p through process_images_inner, inside the batch."""
    pc = copy.copy(p)
    pc.n_iter, pc.enable_hr, pc.detailer = 1, False, False
    return process_images_inner(pc)


def process_images_inner(p):
    p.scripts.process(p)
    p.init()
    images = []
    for n in range(p.n_iter):
        p.iteration = n
        if shared.state.interrupted:
            break
        p.scripts.process_batch(p, batch_number=n)
        latents = process_diffusers(p)
        if shared.state.interrupted:
            break
        p.scripts.postprocess_batch(p, latents, batch_number=n)
        if p.detailer:
            detail(p)
        images.append(latents)
    processed = Processed(images, create_infotext(p))
    if not (shared.state.interrupted or shared.state.skipped):
        p.scripts.postprocess(p, processed)
    return processed


def process_images(p):
    try:
        script_callbacks.before_process_callback(p)
        return process_images_inner(p)
    finally:
        script_callbacks.after_process_callback(p)
