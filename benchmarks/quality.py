"""Sample quality with and without Skip Tuning on the bundled Fashion-MNIST models.

``--model unet`` (default) is the bundled U-Net; ``--model wide_unet`` a second U-Net of the same
kind (width 96, another seed); ``--model uvit`` the demo U-ViT (ComfyUI's HunyuanDiT class scaled
down, same latents, schedule and loss; skip_tuning_demo/uvit.py); ``--model lcm_unet`` the bundled U-Net's
latent-consistency student (skip_tuning_demo/distill.py), sampled through ComfyUI as an LCM model
(ModelSamplingDiscrete "lcm"), comfy backend only.

For each configuration (sampler, steps, CFG scale, rho_bottom) the script samples blocks of
class-balanced images with common random numbers: block b always uses the same labels,
initial noise and (stochastic samplers) per-step noise, whatever the configuration, so
differences between configurations are paired. It stores the shipped classifier's 128-d
features and predictions of every sample (one .npz per configuration and block) and can
resume; ``benchmarks/quality_report.py`` turns the store into tables and plots.

Backends:
  diffusers  skip_tuning_demo.sampling (diffusers schedulers driving the network), Skip Tuning through
             SkipScalingHooks (the A1111 path) for the U-Net, the core's replace patches for the U-ViT.
  comfy      ComfyUI's UNetModel in a BaseModel (U-ViT: its HunyuanDiT model) sampled by
             comfy.sample.sample (KSampler), Skip Tuning through this repository's "Skip Tuning" node.

    python3 benchmarks/quality.py --preset headline          # what docs/results/ shows (about 5-6 hours)
    python3 benchmarks/quality.py --preset quick             # a 40-minute subset
    python3 benchmarks/quality.py --preset comfy             # the same model through KSampler (about 25 min)
    python3 benchmarks/quality.py --preset full              # the whole grid, 4 x 250 samples each (about 13 hours)
    python3 benchmarks/quality.py --preset smoke --out outputs/smoke
    python3 benchmarks/quality.py --model uvit --preset headline   # the U-ViT (store: .../quality_uvit)
    python3 benchmarks/quality.py --model uvit --device cuda --chunk 250   # on a GPU: minutes
    python3 benchmarks/quality.py --model uvit --preset unguided_steps     # 4, 15, 25 unguided steps (under 1 hour)
    python3 benchmarks/quality_report.py --model uvit --tag unguided_steps --docs docs/results
    python3 benchmarks/quality.py --model lcm_unet --preset distilled       # the LCM student through KSampler
    python3 benchmarks/quality.py --model unet --preset distilled_base      # the base at the same evaluations
    python3 benchmarks/distilled_report.py --docs docs/results              # side by side (docs/results/distilled.md)
    python3 benchmarks/quality.py --preset schedulers --threads 1           # schedulers, AYS/GITS, newer samplers
    python3 benchmarks/schedulers_report.py --docs docs/results             # docs/results/schedulers.md

Presets run in stages; a stage may sample only the best rho_bottom of an earlier stage
(selected on seed block 0, then measured on fresh blocks so the choice does not flatter it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import NamedTuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import REPO_ROOT, machine_summary, save_samples, set_threads  # noqa: E402

DEFAULT_STORE = os.path.join(REPO_ROOT, "outputs", "benchmarks", "quality")
MODELS = ("unet", "wide_unet", "uvit", "lcm_unet")

ALL_SAMPLERS = ("euler", "heun", "dpmpp_2m", "unipc", "ddim", "euler_a")
ALL_STEPS = (4, 6, 8, 10, 15, 25)
ALL_RHOS = (0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2)
QUICK_SAMPLERS = ["euler", "dpmpp_2m", "unipc", "ddim", "euler_a"]
BLOCK_SIZE = 250
SAMPLING_CHUNK = 125  # images per network call (x2 with CFG): the fastest size on a 2-core CPU
REFERENCE_STEPS = 50

GRID_SAMPLERS_BUT_HEUN = [s for s in ALL_SAMPLERS if s != "heun"]
DISTILLED_RHOS = (0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2)
DEFAULT_SCHEDULER = "normal"  # KSampler's default; its keys carry no scheduler, so older stores read unchanged

# The schedulers preset: KSampler's schedulers and ComfyUI's optimized step schedules (AlignYourSteps' SD1
# schedule, GITS), the presets table's sampler families and the newer samplers, at 4, 6 and 10 steps.
SCHEDULER_RHOS = (0.6, 0.8, 0.9, 1.0, 1.1)
TABLE_SAMPLERS = ("euler", "dpmpp_2m", "euler_a")
# The schedules the first tiers compare: the optimized ones against KSampler's default and karras.
COMPARED_SCHEDULERS = ("ays", "gits", "karras", "normal")
OTHER_KSAMPLER_SCHEDULERS = ("exponential", "sgm_uniform", "beta", "kl_optimal")
NEWER_SAMPLERS = ("dpmpp_2m_sde", "unipc_bh2", "deis", "res_multistep", "ipndm", "er_sde", "euler_cfg_pp",
                  "dpmpp_2m_cfg_pp")
CFG_PP_SAMPLERS = ("euler_cfg_pp", "dpmpp_2m_cfg_pp")  # they evaluate the unconditional model at CFG 1 too


def screen_and_confirm(samplers, schedulers, steps, cfgs, tier: int, models=None, rhos=SCHEDULER_RHOS,
                       confirm_blocks=(1,)):
    """Per cell (sampler, scheduler, steps, cfg), in this order: a rho screen on block 0, then plain vs the
    screen's best on fresh blocks. Cells come one after another, so a run stopped anywhere leaves every
    finished cell confirmed; the schedulers of one (sampler, steps, cfg) come together, for comparison."""
    stages = []
    for n in steps:
        for cfg in cfgs:
            for sampler in samplers:
                for scheduler in schedulers:
                    cell = dict(samplers=[sampler], schedulers=[scheduler], steps=[n], cfgs=[cfg], tier=tier)
                    if models:
                        cell["models"] = list(models)
                    stages.append(dict(cell, rhos=list(rhos), blocks=[0]))
                    stages.append(dict(cell, rhos="best", blocks=list(confirm_blocks)))
    return stages


def schedulers_stages():
    """The schedulers preset, most important question first: does Skip Tuning still gain on the optimized
    schedules (AlignYourSteps, GITS), against karras and normal, and is the best rho the same? Cut to what a few
    hours on 2 cores can hold: 4 steps everywhere; 6 and 10 steps on the U-Net, and on the other two models for the
    optimized schedules without guidance only, last; the newer samplers with normal and AlignYourSteps only, at 4
    steps."""
    first = list(COMPARED_SCHEDULERS)
    others = list(OTHER_KSAMPLER_SCHEDULERS)
    return [
        # Tier 1: the U-Net, the table's sampler families, 4 schedules, 4 steps (where the gains are).
        *screen_and_confirm(TABLE_SAMPLERS, first, [4], [1.0, 4.0], tier=1, models=["unet"]),
        # Tier 2: plain step curves on the confirmation's seeds, for the equal-quality view.
        dict(samplers=list(TABLE_SAMPLERS), schedulers=first, steps=[6, 10, 15], cfgs=[1.0, 4.0], rhos=[1.0],
             blocks=[1], tier=2, models=["unet"]),
        # Tier 3: the same question on the wide U-Net and the U-ViT.
        *screen_and_confirm(TABLE_SAMPLERS, first, [4], [1.0, 4.0], tier=3, models=["wide_unet", "uvit"]),
        # Tier 4: the other KSampler schedulers; tier 5: the newer samplers (U-Net, 4 steps).
        *screen_and_confirm(TABLE_SAMPLERS, others, [4], [1.0, 4.0], tier=4, models=["unet"]),
        *screen_and_confirm(NEWER_SAMPLERS, ["normal", "ays"], [4], [1.0, 4.0], tier=5, models=["unet"]),
        # Tier 6: does the answer move with more steps (U-Net)?
        *screen_and_confirm(TABLE_SAMPLERS, first, [6, 10], [1.0, 4.0], tier=6, models=["unet"]),
        # Tier 7: do the optimized schedules keep the gain at 6 and 10 steps where it held at 4 (no guidance)?
        *screen_and_confirm(TABLE_SAMPLERS, ["ays", "gits"], [6, 10], [1.0], tier=7, models=["uvit", "wide_unet"]),
    ]


class Job(NamedTuple):
    sampler: str
    steps: int
    cfg: float
    rho: float
    block: int
    scheduler: str = DEFAULT_SCHEDULER


def grid_completion(samplers, cfg):
    """Screen (block 0) and confirmation over the step counts the first stages left out: on 750 fresh samples
    at 4 steps (cheap, and where few-step error is largest), on 250 at 8, 15 and 25."""
    steps = [s for s in ALL_STEPS if s not in (6, 10)]
    return [dict(samplers=samplers, steps=steps, cfgs=[cfg], rhos=list(ALL_RHOS), blocks=[0]),
            dict(samplers=samplers, steps=[4], cfgs=[cfg], rhos="best", blocks=[1, 2, 3]),
            dict(samplers=samplers, steps=[s for s in steps if s != 4], cfgs=[cfg], rhos="best", blocks=[1])]


# A stage: samplers x steps x cfgs x rhos on the given seed blocks. rhos == "best": plain (1.0)
# plus the rho_bottom != 1 with the lowest FD on block 0 in the earlier stages, per (sampler, steps,
# cfg), even where plain was better, so that the confirmation shows negatives too.
PRESETS = {
    "smoke": {
        "block_size": 20,
        "stages": [
            dict(samplers=["euler", "euler_a"], steps=[4], cfgs=[1.0, 4.0], rhos=[1.0, 0.8], blocks=[0]),
            dict(samplers=["euler", "euler_a"], steps=[4], cfgs=[1.0, 4.0], rhos="best", blocks=[1]),
            dict(samplers=["euler"], steps=[2, 3, 6], cfgs=[4.0], rhos=[1.0], blocks=[1]),
        ],
    },
    "headline": {
        "block_size": BLOCK_SIZE,
        "stages": [
            # Screen every sampler over the whole rho grid at 6 and 10 steps, both CFG scales.
            dict(samplers=list(ALL_SAMPLERS), steps=[6, 10], cfgs=[1.0, 4.0], rhos=list(ALL_RHOS), blocks=[0]),
            # Confirm: plain vs the screen's best rho on 3 fresh blocks (750 samples, paired).
            dict(samplers=list(ALL_SAMPLERS), steps=[6, 10], cfgs=[1.0, 4.0], rhos="best", blocks=[1, 2, 3]),
            # Step curves for the equal-quality figure (CFG 4 = typical use): plain at the other step
            # counts on the same fresh blocks, up to the 50-step reference for DPM++ 2M.
            dict(samplers=["dpmpp_2m"], steps=[4, 8, 15, 25, REFERENCE_STEPS], cfgs=[4.0], rhos=[1.0],
                 blocks=[1, 2, 3]),
            dict(samplers=["euler", "euler_a"], steps=[4, 8, 15, 25], cfgs=[4.0], rhos=[1.0], blocks=[1, 2, 3]),
            # The 50-step reference without guidance (the sampler-independent quality of the model).
            dict(samplers=["dpmpp_2m"], steps=[REFERENCE_STEPS], cfgs=[1.0], rhos=[1.0], blocks=[1, 2, 3]),
            # The tuned step curve: DPM++ 2M with its best rho at 10 steps applied at every step count,
            # up to 50 steps (does the gain shrink as steps grow, as it should for a fix of
            # discretisation error, or stay?).
            dict(samplers=["dpmpp_2m"], steps=[4, 8, 15, 25, REFERENCE_STEPS], cfgs=[4.0], rhos="best",
                 best_from_steps=10, blocks=[1, 2, 3]),
            # Past the grid's ends: the best rho of the screen can sit at 0.6 or at 1.2 (typical use, CFG 4).
            dict(samplers=["dpmpp_2m", "euler_a"], steps=[10], cfgs=[4.0], rhos=[0.5, 1.3, 1.4, 1.6, 1.8],
                 blocks=[0]),
            # ... and below it where the weakest skips won: Euler at 4 steps.
            dict(samplers=["euler"], steps=[4], cfgs=[1.0, 4.0], rhos=[0.3, 0.4, 0.5], blocks=[0]),
            # The rest of the grid: every sampler over the whole rho grid at 4, 8, 15 and 25 steps, each
            # screen followed by a paired confirmation on fresh blocks. Heun comes last: its baseline is
            # held back by the model (see docs/results.md), so its rows are worth the least.
            *grid_completion(GRID_SAMPLERS_BUT_HEUN, cfg=4.0),
            *grid_completion(GRID_SAMPLERS_BUT_HEUN, cfg=1.0),
            *grid_completion(["heun"], cfg=4.0),
            *grid_completion(["heun"], cfg=1.0),
        ],
    },
    # The presets table's rows, each as one cell (plus the default 0.9 where it is typical use), plain vs
    # tuned on 500 paired seeds, no screening: does a row found on one model hold on another?
    # benchmarks/presets_report.py compares the models.
    "presets": {
        "block_size": BLOCK_SIZE,
        "stages": [
            dict(samplers=["dpmpp_2m"], steps=[4], cfgs=[1.0], rhos=[1.0, 0.7, 0.9], blocks=[1, 2],
                 row="ODE multistep, no guidance, 4 steps"),
            dict(samplers=["unipc"], steps=[4], cfgs=[1.0], rhos=[1.0, 0.7], blocks=[1, 2],
                 row="ODE multistep, no guidance, 4 steps"),
            dict(samplers=["dpmpp_2m"], steps=[6], cfgs=[1.0], rhos=[1.0, 0.8], blocks=[1, 2],
                 row="ODE multistep, no guidance, 6-8 steps"),
            dict(samplers=["euler"], steps=[4], cfgs=[1.0], rhos=[1.0, 0.9], blocks=[1, 2],
                 row="Euler, no guidance, 4 steps"),
            dict(samplers=["euler_a"], steps=[4], cfgs=[1.0], rhos=[1.0, 0.6, 0.9], blocks=[1, 2],
                 row="stochastic, no guidance, 4 steps"),
            dict(samplers=["euler"], steps=[4], cfgs=[4.0], rhos=[1.0, 0.6], blocks=[1, 2],
                 row="Euler, CFG 4, 4 steps"),
            dict(samplers=["dpmpp_2m"], steps=[10], cfgs=[4.0], rhos=[1.0, 1.2, 0.9], blocks=[1, 2],
                 row="ODE, CFG 4, 6-25 steps"),
            dict(samplers=["euler"], steps=[10], cfgs=[4.0], rhos=[1.0, 1.2], blocks=[1, 2],
                 row="ODE, CFG 4, 6-25 steps"),
            dict(samplers=["ddim"], steps=[10], cfgs=[4.0], rhos=[1.0, 1.2], blocks=[1, 2], row="DDIM, any"),
            dict(samplers=["euler_a"], steps=[10], cfgs=[4.0], rhos=[1.0, 1.2, 0.9], blocks=[1, 2],
                 row="stochastic, CFG 4, 6+ steps"),
        ],
    },
    # The unguided grid past 10 steps, where the U-ViT's gain had not faded yet: three samplers at 4, 15 and 25
    # steps, screened on block 0 and the best confirmed on 500 fresh paired samples (under 1 hour on 2 cores).
    "unguided_steps": {
        "block_size": BLOCK_SIZE,
        "stages": [
            dict(samplers=["euler", "dpmpp_2m", "euler_a"], steps=[4, 15, 25], cfgs=[1.0],
                 rhos=[0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2], blocks=[0]),
            dict(samplers=["euler", "dpmpp_2m", "euler_a"], steps=[4, 15, 25], cfgs=[1.0], rhos="best",
                 blocks=[1, 2]),
        ],
    },
    # A few-step distilled model (--model lcm_unet): the LCM sampler at 1-8 steps, CFG 1 and the low guidance
    # LCM users add (1.5), and the other samplers people use with such models at 4 steps; each rho screen on
    # block 0, the best confirmed on 500 fresh paired samples (blocks 1, 2).
    "distilled": {
        "backend": "comfy",
        "block_size": BLOCK_SIZE,
        "stages": [
            dict(samplers=["lcm"], steps=[1, 2, 4, 8], cfgs=[1.0, 1.5], rhos=list(DISTILLED_RHOS), blocks=[0]),
            dict(samplers=["euler", "euler_a", "dpmpp_sde"], steps=[4], cfgs=[1.0], rhos=list(DISTILLED_RHOS),
                 blocks=[0]),
            dict(samplers=["lcm"], steps=[1, 2, 4, 8], cfgs=[1.0, 1.5], rhos="best", blocks=[1, 2]),
            dict(samplers=["euler", "euler_a", "dpmpp_sde"], steps=[4], cfgs=[1.0], rhos="best", blocks=[1, 2]),
        ],
    },
    # The base U-Net at the student's evaluation counts (2, 4, 8), CFG 4 (its best FD at any step count),
    # through KSampler on the same seeds: each sampler's rho screen and paired confirmation, then the plain
    # DPM++ 2M curve to 25 steps for the equal-quality column.
    "distilled_base": {
        "backend": "comfy",
        "block_size": BLOCK_SIZE,
        "stages": [
            dict(samplers=["euler", "dpmpp_2m", "euler_a"], steps=[2, 4, 8], cfgs=[4.0], rhos=[0.6, 0.8, 1.0, 1.2],
                 blocks=[0]),
            dict(samplers=["euler", "dpmpp_2m", "euler_a"], steps=[2, 4, 8], cfgs=[4.0], rhos="best", blocks=[1, 2]),
            dict(samplers=["dpmpp_2m"], steps=[15, 25], cfgs=[4.0], rhos=[1.0], blocks=[1, 2]),
        ],
    },
    # Schedulers, optimized step schedules and newer samplers through KSampler / SamplerCustom on the three
    # models, tier by tier (a tier on every model before the next tier); each cell screened on block 0 and its
    # best confirmed on 250 fresh paired samples. benchmarks/schedulers_report.py reads the stores.
    "schedulers": {
        "backend": "comfy",
        "block_size": BLOCK_SIZE,
        "models": ["unet", "wide_unet", "uvit"],
        "store": "schedulers",
        "stages": schedulers_stages(),
    },
    "comfy": {
        "backend": "comfy",
        "block_size": BLOCK_SIZE,
        "stages": [
            dict(samplers=["euler", "dpmpp_2m", "euler_a"], steps=[4, 6, 10], cfgs=[1.0, 4.0],
                 rhos=[0.6, 0.8, 0.9, 1.0, 1.1], blocks=[0]),
            dict(samplers=["euler", "dpmpp_2m", "euler_a"], steps=[4, 6, 10], cfgs=[1.0, 4.0], rhos="best",
                 blocks=[1]),
        ],
    },
    # What fits in about 40 minutes on 2 CPU cores: five samplers at CFG 1 and 4, a coarse rho
    # screen, a paired confirmation on fresh seeds, a DPM++ 2M step curve and the 50-step reference.
    "quick": {
        "block_size": BLOCK_SIZE,
        "stages": [
            dict(samplers=QUICK_SAMPLERS, steps=[6, 10], cfgs=[1.0, 4.0], rhos=[0.6, 0.8, 0.9, 1.0, 1.1],
                 blocks=[0]),
            dict(samplers=QUICK_SAMPLERS, steps=[6, 10], cfgs=[1.0, 4.0], rhos="best", blocks=[1]),
            dict(samplers=["dpmpp_2m"], steps=[4, 8, 15, 25], cfgs=[4.0], rhos=[1.0], blocks=[1]),
            # The 50-step reference: is the model itself good (classifier accuracy, FD)?
            dict(samplers=["dpmpp_2m"], steps=[REFERENCE_STEPS], cfgs=[1.0, 4.0], rhos=[1.0], blocks=[1]),
        ],
    },
    "full": {
        "block_size": BLOCK_SIZE,
        "stages": [
            dict(samplers=list(ALL_SAMPLERS), steps=list(ALL_STEPS), cfgs=[1.0, 4.0], rhos=list(ALL_RHOS),
                 blocks=[0, 1, 2, 3]),
            dict(samplers=list(ALL_SAMPLERS), steps=[REFERENCE_STEPS], cfgs=[1.0, 4.0], rhos=[1.0],
                 blocks=[0, 1, 2, 3]),
        ],
    },
}


def config_key(backend: str, sampler: str, steps: int, cfg: float, rho: float, block: int, n: int,
               scheduler: str = DEFAULT_SCHEDULER) -> str:
    key = f"{backend}_{sampler}_s{steps}_cfg{cfg:g}_rho{rho:.2f}_b{block}_n{n}"
    return key if scheduler == DEFAULT_SCHEDULER else f"{key}_{scheduler}"


def block_seeds(block: int, block_size: int):
    """Labels (balanced, shuffled), initial-noise seed and per-step-noise seed of a seed block."""
    rng = np.random.default_rng(1000 + block)
    labels = rng.permutation(np.arange(block_size) % 10)
    return torch.from_numpy(labels).long(), 10_000 + block, 20_000 + block


def nfe(sampler: str, steps: int) -> int:
    """Network evaluations per sample (one batched cond + uncond call counts once)."""
    return 2 * steps - 1 if sampler in ("heun", "dpmpp_sde") else steps


def units(job: Job, block_size: int) -> int:
    """Sample x network evaluations of a job (cond + uncond count twice: they double the work on a CPU)."""
    guided = job.cfg != 1.0 or job.sampler in CFG_PP_SAMPLERS
    return block_size * nfe(job.sampler, job.steps) * (2 if guided else 1)


def default_store(model: str, preset: dict | None = None) -> str:
    name = (preset or {}).get("store")
    if name:
        return os.path.join(os.path.dirname(DEFAULT_STORE), f"{name}_{model}")
    return DEFAULT_STORE if model == "unet" else f"{DEFAULT_STORE}_{model}"


class Runner:
    def __init__(self, backend: str, store: str, block_size: int, model: str = "unet", device: str = "cpu",
                 chunk: int = SAMPLING_CHUNK):
        from skip_tuning_demo.model import LCM_UNET_DIR, WIDE_UNET_DIR

        self.backend = backend
        self.store = store
        self.block_size = block_size
        self.model = model
        self.chunk = chunk
        self.weights_dir = {"wide_unet": WIDE_UNET_DIR, "lcm_unet": LCM_UNET_DIR}.get(model)
        if model == "lcm_unet" and backend != "comfy":
            raise SystemExit("the LCM student is sampled as ComfyUI samples it: --backend comfy")
        os.makedirs(os.path.join(store, "samples"), exist_ok=True)
        self.check_weights()
        if backend == "comfy":
            if device != "cpu":
                raise SystemExit("the comfy backend samples on the CPU")
            from _comfy_demo import lcm_sampling, load_demo_in_comfy, load_uvit_in_comfy

            if model == "uvit":
                self.patcher, self.unet, self.table, self.config = load_uvit_in_comfy()
            else:
                self.patcher, self.unet, self.table, self.config = load_demo_in_comfy(self.weights_dir)
            if model == "lcm_unet":
                self.patcher = lcm_sampling(self.patcher)
        elif model == "uvit":
            from skip_tuning_demo.uvit import load_uvit_model

            self.unet, self.table, self.config = load_uvit_model(device)
        else:
            from skip_tuning_demo.model import load_demo_model

            self.unet, self.table, self.config = load_demo_model(device, weights_dir=self.weights_dir)
        from skip_tuning_demo import metrics

        self.metrics = metrics
        self.classifier = metrics.get_classifier(device)
        self.seconds_per_unit = None  # seconds per (sample x network evaluation)

    def check_weights(self) -> None:
        """A store holds samples of one set of weights: refuse to mix in another model's."""
        import hashlib

        from skip_tuning_demo.classifier import CLASSIFIER_WEIGHTS
        from skip_tuning_demo.model import UNET_WEIGHTS
        from skip_tuning_demo.uvit import UVIT_WEIGHTS

        digests = {}
        unet_weights = os.path.join(self.weights_dir or os.path.dirname(UNET_WEIGHTS), os.path.basename(UNET_WEIGHTS))
        network = ("uvit", UVIT_WEIGHTS) if self.model == "uvit" else ("unet", unet_weights)
        for name, path in (network, ("classifier", CLASSIFIER_WEIGHTS)):
            with open(path, "rb") as f:
                digests[name] = hashlib.sha256(f.read()).hexdigest()
        record = os.path.join(self.store, "weights.json")
        if os.path.exists(record):
            with open(record, encoding="utf-8") as f:
                stored = json.load(f)
            if stored != digests:
                raise SystemExit(f"{self.store} holds samples of other weights ({stored}); use another --out")
        else:
            with open(record, "w", encoding="utf-8") as f:
                json.dump(digests, f)

    def path(self, key: str) -> str:
        return os.path.join(self.store, "samples", key + ".npz")

    def images(self, sampler, steps, cfg, rho, block, scheduler=DEFAULT_SCHEDULER):
        from skip_tuning import SkipScalingHooks, rho_schedule
        from skip_tuning_demo.model import unpack_latents
        from skip_tuning_demo.sampling import make_noise, sample

        labels, noise_seed, step_seed = block_seeds(block, self.block_size)
        noise = make_noise(self.block_size, noise_seed)
        if self.backend == "comfy":
            from _comfy_demo import comfy_sample_latents, skip_tuned

            latents = comfy_sample_latents(skip_tuned(self.patcher, rho), self.table, labels, sampler, steps, cfg,
                                           noise, seed=step_seed, scheduler=scheduler,
                                           kind="uvit" if self.model == "uvit" else "unet")
            return unpack_latents(latents).clamp(-1, 1), labels
        if scheduler != DEFAULT_SCHEDULER:
            raise SystemExit("schedulers other than the default are measured through ComfyUI: --backend comfy")
        if self.model == "uvit":
            from skip_tuning import find_skip_layout, with_skip_replace_patches
            from skip_tuning_demo.uvit import UViTDenoiser

            layout = find_skip_layout(self.unet)
            options = with_skip_replace_patches({}, layout.replace_keys, rho_schedule(layout.n_skips, rho))
            images = sample(UViTDenoiser(self.unet, options), self.table, labels, sampler, steps, cfg, noise=noise,
                            step_seed=step_seed, batch_size=self.chunk)
            return images, labels
        rhos = rho_schedule(len(self.unet.output_blocks), rho)
        with SkipScalingHooks(self.unet, rhos):
            images = sample(self.unet, self.table, labels, sampler, steps, cfg, noise=noise, step_seed=step_seed,
                            batch_size=self.chunk)
        return images, labels

    def run(self, sampler, steps, cfg, rho, block, scheduler=DEFAULT_SCHEDULER) -> dict:
        key = config_key(self.backend, sampler, steps, cfg, rho, block, self.block_size, scheduler)
        if os.path.exists(self.path(key)):
            return {"key": key, "cached": True}
        t0 = time.perf_counter()
        with torch.inference_mode():
            images, labels = self.images(sampler, steps, cfg, rho, block, scheduler)
        seconds = time.perf_counter() - t0
        features = self.metrics.compute_features(images, self.classifier).astype(np.float32)
        predictions = self.metrics.predict(images, self.classifier).numpy().astype(np.int8)
        save_samples(self.path(key), features=features, predictions=predictions,
                     labels=labels.numpy().astype(np.int8), seconds=seconds)
        rate = seconds / units(Job(sampler, steps, cfg, rho, block, scheduler), self.block_size)
        self.seconds_per_unit = rate if self.seconds_per_unit is None else 0.8 * self.seconds_per_unit + 0.2 * rate
        accuracy = float((predictions == labels.numpy()).mean())
        return {"key": key, "seconds": seconds, "accuracy": accuracy}


def screened_best(store: str, backend: str, sampler: str, steps: int, cfg: float, rhos, n: int,
                  scheduler: str = DEFAULT_SCHEDULER) -> float | None:
    """rho_bottom with the lowest FD on block 0 among the stored screen results."""
    from _stats import Reference, reference

    paths = {rho: os.path.join(store, "samples", config_key(backend, sampler, steps, cfg, rho, 0, n, scheduler)
                               + ".npz") for rho in rhos}
    paths = {rho: path for rho, path in paths.items() if os.path.exists(path)}
    if not paths:
        return None
    ref = Reference(*reference())
    best = None
    for rho, path in paths.items():
        with np.load(path) as data:
            fd = ref.fd(data["features"])
        if best is None or fd < best[0]:
            best = (fd, rho)
    return None if best is None else best[1]


def plan(preset: dict, store: str, backend: str, stage_index: int):
    n = preset["block_size"]
    stage = preset["stages"][stage_index]
    jobs = []
    for sampler in stage["samplers"]:
        for scheduler in stage.get("schedulers", [DEFAULT_SCHEDULER]):
            for steps in stage["steps"]:
                for cfg in stage["cfgs"]:
                    if stage["rhos"] == "best":
                        screened_steps = stage.get("best_from_steps", steps)
                        best = screened_best(store, backend, sampler, screened_steps, cfg,
                                             [r for r in ALL_RHOS if r != 1.0], n, scheduler)
                        rhos = [1.0] if best is None else [1.0, best]
                    else:
                        rhos = stage["rhos"]
                    for block in stage["blocks"]:
                        for rho in rhos:
                            jobs.append(Job(sampler, steps, float(cfg), float(rho), block, scheduler))
    return jobs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="headline")
    parser.add_argument("--backend", choices=["diffusers", "comfy"], help="default: the preset's")
    parser.add_argument("--model", choices=MODELS, nargs="+",
                        help="the bundled U-Net, the second (wide) U-Net or the demo U-ViT (default: the preset's "
                             "models, else unet); with several, each tier of stages runs on every model in turn")
    parser.add_argument("--device", default="cpu", help="torch device for the diffusers backend (cpu, cuda)")
    parser.add_argument("--chunk", type=int, default=SAMPLING_CHUNK,
                        help="images per network call; ancestral noise is drawn per chunk, so a store keeps one")
    parser.add_argument("--out", help="result store (resumable; default outputs/benchmarks/quality[_<model>], or the "
                                      "preset's store name; with several models a {model} field is filled in)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stages", type=int, nargs="*", help="run only these stage indices")
    parser.add_argument("--tiers", type=int, nargs="*", help="run only the stages of these tiers")
    parser.add_argument("--dry-run", action="store_true", help="list the jobs and the estimated cost")
    args = parser.parse_args(argv)

    set_threads(args.threads)
    preset = PRESETS[args.preset]
    models = args.model or preset.get("models", ["unet"])
    if args.out and len(models) > 1 and "{model}" not in args.out:
        raise SystemExit("several models need one store each: put {model} in --out")
    stores = {m: args.out.format(model=m) if args.out else default_store(m, preset) for m in models}
    backend = args.backend or preset.get("backend", "diffusers")
    block_size = preset["block_size"]
    stages = args.stages if args.stages else list(range(len(preset["stages"])))
    tiers = sorted({preset["stages"][i].get("tier", 0) for i in stages})
    if args.tiers:
        tiers = [t for t in tiers if t in args.tiers]
    print(f"preset {args.preset}, models {models}, backend {backend}, stores {stores}; {machine_summary()}",
          flush=True)

    runners = {}
    for tier in tiers:
        for model in models:
            if not any(model in preset["stages"][i].get("models", models) for i in stages
                       if preset["stages"][i].get("tier", 0) == tier):
                continue
            store = stores[model]
            if not args.dry_run and model not in runners:
                runners[model] = Runner(backend, store, block_size, model, args.device, args.chunk)
            runner = runners.get(model)
            for stage_index in stages:
                stage = preset["stages"][stage_index]
                if stage.get("tier", 0) != tier or model not in stage.get("models", models):
                    continue
                jobs = plan(preset, store, backend, stage_index)
                todo = [job for job in jobs if args.dry_run or not os.path.exists(runner.path(
                    config_key(backend, job.sampler, job.steps, job.cfg, job.rho, job.block, block_size,
                               job.scheduler)))]
                if not todo:
                    continue
                cost = sum(units(job, block_size) for job in todo)
                print(f"{model} stage {stage_index} (tier {tier}): {len(todo)} of {len(jobs)} jobs to run, "
                      f"{cost / 1e6:.2f} M sample-evaluations", flush=True)
                if args.dry_run:
                    continue
                for k, job in enumerate(todo):
                    result = runner.run(*job)
                    if result.get("cached"):
                        continue
                    left = sum(units(j, block_size) for j in todo[k + 1:])
                    eta = left * (runner.seconds_per_unit or 0.0) / 60
                    print(f"  [{k + 1}/{len(todo)}] {result['key']}: {result['seconds']:.1f} s, "
                          f"accuracy {result['accuracy']:.3f}; stage left ~{eta:.0f} min", flush=True)
            if not args.dry_run:
                with open(os.path.join(store, "meta.json"), "w", encoding="utf-8") as f:
                    json.dump({"block_size": block_size, "model": model, "device": args.device, "chunk": args.chunk,
                               "machine": machine_summary()}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
