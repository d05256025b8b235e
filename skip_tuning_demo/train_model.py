"""Train the small class-conditional Fashion-MNIST demo diffusion models (CPU friendly).

Three architectures on the same latents (``--arch``); the shipped weights were made by these
commands (``--device cuda`` where a GPU was at hand: the U-ViT, the DiT and the wide U-Net took
5 minutes side by side on one GPU; each is under 2 hours on 2 CPU cores at the same steps):

* ``unet`` (the bundled model; 70 minutes on 2 CPU cores)::

    python3 -m skip_tuning_demo.train_model --bf16 --steps 20000 --max-minutes 70 --ema-decay 0.999

  and a second, wider one with another seed, the same recipe at the bundled model's 4200 steps
  (``skip_tuning_demo/weights/wide_unet``)::

    python3 -m skip_tuning_demo.train_model --model-channels 96 --seed 1 --bf16 --steps 4200 --ema-decay 0.999
        --out-dir skip_tuning_demo/weights/wide_unet

* ``uvit``, ComfyUI's HunyuanDiT class scaled down (:mod:`skip_tuning_demo.uvit`; needs a
  ComfyUI source tree; bf16 autocast is slower than fp32 on CPUs without bf16 units)::

    python3 -m skip_tuning_demo.train_model --arch uvit --batch-size 64 --steps 4500 --ema-decay 0.999 --resume

* ``dit``, ComfyUI's Flux class scaled down (:mod:`skip_tuning_demo.dit`), trained as Flux is:
  rectified flow, velocity target, logit-normal times (the eps loss options below do not apply)::

    python3 -m skip_tuning_demo.train_model --arch dit --batch-size 64 --steps 4500 --ema-decay 0.999 --resume

* ``--distill lcm``: a few-step student of the bundled U-Net by latent consistency distillation
  (:mod:`skip_tuning_demo.distill`; CFG 4 folded in), sampled in ComfyUI as an LCM model
  (``skip_tuning_demo/weights/lcm_unet``; 4810 steps in the 95-minute budget on 2 CPU cores shared with
  other work, one thread, so the step count depends on the machine)::

    python3 -m skip_tuning_demo.train_model --distill lcm --bf16 --batch-size 64 --lr 1e-4 --warmup 100
        --steps 8000 --max-minutes 95 --ema-decay 0.999 --threads 1 --resume

Loss: eps MSE whose x0-space weight is clamped to [1, 5] (``--snr-floor``,
``--min-snr-gamma``): Min-SNR at low noise, and at high noise enough weight
that the eps prediction is accurate where sampling from pure noise starts.

The script writes the EMA weights (fp16 safetensors), the class context table
and the JSON config into ``--out-dir`` (default: ``skip_tuning_demo/weights``)
every ``--save-every`` steps and at the end, so a partially trained model is
always usable.  A full training state for ``--resume`` is written to
``--state-path``.

Learning rate: linear warmup then cosine decay to ``--min-lr-ratio`` of the
peak.  The cosine progress is ``step / steps``; when ``--max-minutes`` is set
the progress is the larger of that and the fraction of the time budget used,
so the schedule completes within the time budget (this makes the run depend
on machine speed; use ``--max-minutes 0`` for a step-deterministic run).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import signal
import sys
import tempfile
import time

# On a shared/oversubscribed CPU, OpenMP's default spin-waiting makes multi-threaded
# steps many times slower; passive waiting must be chosen before torch starts OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from skip_tuning_demo import distill as demo_distill  # type: ignore
    from skip_tuning_demo import dit as demo_dit  # type: ignore
    from skip_tuning_demo import model as demo_model  # type: ignore
    from skip_tuning_demo import uvit as demo_uvit  # type: ignore
    from skip_tuning_demo.data import DEFAULT_DATA_DIR, load_fashion_mnist, to_model_images  # type: ignore
else:
    from . import distill as demo_distill
    from . import dit as demo_dit
    from . import model as demo_model
    from . import uvit as demo_uvit
    from .data import DEFAULT_DATA_DIR, load_fashion_mnist, to_model_images


class DemoModel(nn.Module):
    """The denoising network (``unet``: ldm UNetModel, ``uvit``: ComfyUI's HunYuanDiT, ``dit``:
    ComfyUI's Flux) plus the learned class context table (trained jointly)."""

    def __init__(self, arch: str, seed: int = 0, unet_kwargs: dict | None = None):
        super().__init__()
        self.arch = arch
        self.unet_kwargs = unet_kwargs
        if arch == "unet":
            self.unet = demo_model.build_unet(unet_kwargs)
        elif arch == "uvit":
            self.unet = demo_uvit.build_uvit(demo_uvit.default_config()["uvit_kwargs"])
            demo_uvit.init_uvit_(self.unet, seed)
        else:
            self.unet = demo_dit.build_dit(demo_dit.default_config()["dit_kwargs"])
            demo_dit.init_dit_(self.unet, seed)
        table = torch.randn(demo_model.NUM_CLASSES + 1, demo_model.CONTEXT_TOKENS, demo_model.CONTEXT_DIM)
        self.context_table = nn.Parameter(table)

    def forward(self, x, t, labels):
        context = self.context_table[labels]
        if self.arch == "unet":
            return self.unet(x, t, context=context)
        if self.arch == "uvit":
            return demo_uvit.uvit_forward(self.unet, x, t, context)
        return demo_dit.dit_forward(self.unet, x, t, context)


def scaled_linear_alphas_cumprod(cfg) -> torch.Tensor:
    betas = (
        torch.linspace(
            cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, cfg["num_train_timesteps"], dtype=torch.float64
        )
        ** 2
    )
    return torch.cumprod(1.0 - betas, dim=0).float()


def eps_loss_weights(alphas_cumprod: torch.Tensor, min_snr_gamma: float, snr_floor: float) -> torch.Tensor:
    """Per-timestep weights of the eps MSE.

    An eps error e is an x0 error e / sqrt(SNR), so eps MSE * w is x0 MSE * SNR * w.
    The x0-space weight SNR * w is clamped to [snr_floor, min_snr_gamma].
    The cap leaves eps at the lowest noise levels nearly untrained (w ~ gamma / SNR, 0.004 at t = 0):
    harmless for samplers that only take x0 there, but Heun's last correction takes a derivative
    at t = 0 and is poor with the shipped weights (docs/results.md).
    """
    snr = alphas_cumprod / (1 - alphas_cumprod)
    x0_weight = snr
    if snr_floor > 0:
        x0_weight = torch.clamp(x0_weight, min=snr_floor)
    if min_snr_gamma > 0:
        x0_weight = torch.clamp(x0_weight, max=min_snr_gamma)
    return x0_weight / snr


def flow_batch(x0: torch.Tensor, noise: torch.Tensor, gen: torch.Generator):
    """Rectified flow as Flux/SD3 train it: t logit-normal, x_t = (1 - t) x0 + t noise, target noise - x0."""
    schedule = demo_dit.FLOW_SCHEDULE
    logits = torch.randn(x0.shape[0], generator=gen) * schedule["logit_std"] + schedule["logit_mean"]
    t = torch.sigmoid(logits).to(x0.device)
    xt = (1 - t).view(-1, 1, 1, 1) * x0 + t.view(-1, 1, 1, 1) * noise
    return xt, t, noise - x0, torch.ones_like(t)


def lr_at(progress: float, step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    p = min(max(progress, 0.0), 1.0)
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


@torch.no_grad()
def ema_update(ema_params: list, model_params: list, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, one fused call per list (the networks keep no buffers)."""
    torch._foreach_lerp_(ema_params, model_params, 1 - decay)


def _atomic_save_safetensors(tensors, path, metadata=None):
    from safetensors.torch import save_file

    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata=metadata)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


# arch -> (network weights, class table, config) files and the config written beside them
_OUTPUTS = {
    "unet": (demo_model.UNET_WEIGHTS, demo_model.CONTEXT_WEIGHTS, demo_model.CONFIG_PATH, demo_model.default_config),
    "uvit": (demo_uvit.UVIT_WEIGHTS, demo_uvit.UVIT_CONTEXT_WEIGHTS, demo_uvit.UVIT_CONFIG_PATH,
             demo_uvit.default_config),
    "dit": (demo_dit.DIT_WEIGHTS, demo_dit.DIT_CONTEXT_WEIGHTS, demo_dit.DIT_CONFIG_PATH, demo_dit.default_config),
}


def export_weights(ema: DemoModel, out_dir: str, info: dict) -> None:
    weights_path, context_path, config_path, default_config = _OUTPUTS[ema.arch]
    os.makedirs(out_dir, exist_ok=True)
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in ema.unet.state_dict().items()}
    meta = {"format": f"{ema.arch} state dict (no prefix), fp16, EMA weights"}
    _atomic_save_safetensors(sd, os.path.join(out_dir, os.path.basename(weights_path)), meta)
    ctx = {demo_model.CONTEXT_KEY: ema.context_table.detach().float().contiguous()}
    _atomic_save_safetensors(
        ctx,
        os.path.join(out_dir, os.path.basename(context_path)),
        {"format": "[11, L, context_dim]; rows 0-9 classes, row 10 null context"},
    )
    cfg = default_config()
    if ema.unet_kwargs is not None:
        cfg["unet_kwargs"] = ema.unet_kwargs
    cfg["training"] = info
    path = os.path.join(out_dir, os.path.basename(config_path))
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)


def load_teacher_into(model: DemoModel, teacher_dir: str) -> dict:
    """Start a student from the teacher's U-Net and class table (the table stays frozen)."""
    unet, table, config = demo_model.load_demo_model(weights_dir=teacher_dir)
    model.unet.load_state_dict(unet.state_dict())
    with torch.no_grad():
        model.context_table.copy_(table)
    model.context_table.requires_grad_(False)
    return config


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=tuple(_OUTPUTS), default="unet", help="network to train (see above)")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    p.add_argument("--out-dir", default=None,
                   help="default: skip_tuning_demo/weights (with --distill lcm: skip_tuning_demo/weights/lcm_unet)")
    p.add_argument("--distill", choices=("lcm",), default=None,
                   help="train a latent consistency student of --teacher-dir instead of a model from scratch")
    p.add_argument("--teacher-dir", default=demo_model.WEIGHTS_DIR, help="--distill: the teacher U-Net's folder")
    p.add_argument("--guidance", type=float, default=4.0,
                   help="--distill: the teacher's CFG scale folded into the student (ComfyUI's convention)")
    p.add_argument("--huber-c", type=float, default=0.001, help="--distill: pseudo-Huber constant of the loss")
    p.add_argument("--target-ema-decay", type=float, default=0.95,
                   help="--distill: EMA of the student that gives the consistency target (LCM's 0.95)")
    p.add_argument("--model-channels", type=int, default=None,
                   help="unet: base width (a multiple of 32, GroupNorm's group count; default: the bundled 64)")
    p.add_argument("--device", default="cpu", help="torch device to train on (cpu, cuda)")
    p.add_argument("--state-path", default=None,
                   help="training state for --resume (default: skip_tuning_demo_train_state_<arch>.pt in the temp dir)")
    p.add_argument("--resume", action="store_true", help="resume from --state-path if it exists")
    p.add_argument("--steps", type=int, default=8000)
    p.add_argument("--max-minutes", type=float, default=0.0, help="wall-clock budget (0 = none)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--min-lr-ratio", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=250)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--ema-decay", type=float, default=0.9995)
    p.add_argument("--label-dropout", type=float, default=0.12)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument(
        "--min-snr-gamma",
        type=float,
        default=5.0,
        help="Min-SNR weighting: the x0-space weight is capped at gamma (0 = plain eps MSE)",
    )
    p.add_argument(
        "--snr-floor",
        type=float,
        default=1.0,
        help="the x0-space weight is at least this (truncated SNR); without it the eps loss "
        "barely penalises x0 errors at high noise, where sampling from pure noise starts (0 = off)",
    )
    p.add_argument(
        "--bf16",
        action="store_true",
        help="bfloat16 autocast for the forward pass (fp32 weights, optimizer and EMA); "
        "about 1.3-2x faster on CPUs with AVX512-BF16 or AMX",
    )
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.distill and args.arch != "unet":
        raise SystemExit("--distill is for --arch unet")
    run_name = args.arch + (f"_{args.distill}" if args.distill else "")
    if args.out_dir is None:
        args.out_dir = demo_model.LCM_UNET_DIR if args.distill else demo_model.WEIGHTS_DIR
    if args.state_path is None:
        args.state_path = os.path.join(tempfile.gettempdir(), f"skip_tuning_demo_train_state_{run_name}.pt")
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    images, labels = load_fashion_mnist("train", args.data_dir)
    latents = demo_model.pack_images(to_model_images(images))
    labels_t = torch.from_numpy(labels)
    n = latents.shape[0]
    print(f"data: {n} images -> latents {tuple(latents.shape[1:])}", flush=True)

    device = torch.device(args.device)
    latents, labels_t = latents.to(device), labels_t.to(device)
    cfg = demo_model.default_config()
    unet_kwargs = None
    if args.model_channels is not None:
        if args.arch != "unet" or args.model_channels % 32:
            raise SystemExit("--model-channels is for --arch unet and must be a multiple of 32")
        unet_kwargs = dict(cfg["unet_kwargs"], model_channels=args.model_channels)
    teacher = target = None
    if args.distill:
        teacher_config_path = os.path.join(args.teacher_dir, os.path.basename(demo_model.CONFIG_PATH))
        teacher_config = demo_model.load_config(teacher_config_path)
        unet_kwargs = teacher_config["unet_kwargs"]
    model = DemoModel(args.arch, args.seed, unet_kwargs)
    if args.distill:
        load_teacher_into(model, args.teacher_dir)
    model.to(device)
    ema = copy.deepcopy(model).eval()
    for p_ in ema.parameters():
        p_.requires_grad_(False)
    if args.distill:
        teacher, target = copy.deepcopy(ema), copy.deepcopy(ema)
    trainable = [p_ for p_ in model.parameters() if p_.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.999))
    alphas_cumprod = scaled_linear_alphas_cumprod(cfg["schedule"]).to(device)
    sqrt_ac = alphas_cumprod.sqrt()
    sqrt_1mac = (1 - alphas_cumprod).sqrt()
    gen = torch.Generator().manual_seed(args.seed)
    snr_weights = eps_loss_weights(alphas_cumprod, args.min_snr_gamma, args.snr_floor)
    ema_params, model_params = list(ema.parameters()), list(model.parameters())
    target_params = list(target.parameters()) if target is not None else []

    step = 0
    elapsed_before = 0.0
    if args.resume and os.path.exists(args.state_path):
        st = torch.load(args.state_path, map_location=device, weights_only=False)
        model.load_state_dict(st["model"])
        ema.load_state_dict(st["ema"])
        if target is not None:
            target.load_state_dict(st["target"])
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"].cpu())
        step = st["step"]
        elapsed_before = st.get("elapsed", 0.0)
        print(f"resumed from step {step}", flush=True)

    n_params = demo_model.count_parameters(model.unet)
    print(
        f"{args.arch} params: {n_params} ({n_params / 1e6:.2f}M)",
        flush=True,
    )

    stop = {"flag": False}

    def _on_signal(signum, frame):  # save and exit cleanly on SIGTERM/SIGINT
        stop["flag"] = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    t_start = time.time() - elapsed_before
    budget = args.max_minutes * 60.0
    loss_hist = []
    last_log = time.time()
    last_log_step = step

    if args.distill:
        teacher_name = f"'{teacher_config['name']}' (seed {teacher_config['training']['seed']})"
        objective = (f"latent consistency distillation of {teacher_name}, "
                     f"CFG {args.guidance:g} folded in, pseudo-Huber c={args.huber_c:g}, target EMA "
                     f"{args.target_ema_decay:g}; sample as LCM (ModelSamplingDiscrete lcm, sampler lcm)")
    elif args.arch == "dit":
        objective = "rectified flow, logit-normal t"
    else:
        objective = "eps, SNR-clamped weights"

    def info(final: bool):
        return {
            "steps": step,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "ema_decay": args.ema_decay,
            "label_dropout": args.label_dropout,
            "objective": objective,
            "min_snr_gamma": args.min_snr_gamma,
            "snr_floor": args.snr_floor,
            "bf16_autocast": bool(args.bf16),
            "seed": args.seed,
            "device": device.type,
            "wall_seconds": round(time.time() - t_start, 1),
            "recent_loss": round(float(np.mean(loss_hist[-200:])), 5) if loss_hist else None,
            "arch": args.arch,
            "network_parameters": n_params,
            "finished": final,
        }

    def save(final: bool):
        model_state = {
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            **({"target": target.state_dict()} if target is not None else {}),
            "opt": opt.state_dict(),
            "gen": gen.get_state(),
            "step": step,
            "elapsed": time.time() - t_start,
        }
        torch.save(model_state, args.state_path + ".tmp")
        os.replace(args.state_path + ".tmp", args.state_path)
        export_weights(ema, args.out_dir, info(final))
        print(f"saved step {step} (final={final})", flush=True)

    model.train()
    while step < args.steps and not stop["flag"]:
        elapsed = time.time() - t_start
        if budget > 0 and elapsed >= budget:
            print("time budget reached", flush=True)
            break
        progress = step / args.steps
        if budget > 0:
            progress = max(progress, elapsed / budget)
        lr = lr_at(progress, step, args)
        for g in opt.param_groups:
            g["lr"] = lr

        # Random numbers come from the CPU generator: the same stream whatever the device.
        idx = torch.randint(0, n, (args.batch_size,), generator=gen).to(device)
        x0 = latents[idx]
        y = labels_t[idx].clone()
        drop = torch.rand(args.batch_size, generator=gen) < args.label_dropout
        y[drop.to(device)] = demo_model.NULL_INDEX
        noise = torch.randn(x0.shape, generator=gen).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            if args.distill:
                grid_index = torch.randint(0, demo_distill.LCM_GRID_STEPS, (args.batch_size,), generator=gen)
                loss = demo_distill.lcm_distillation_loss(
                    model, target, teacher, x0, noise, y, grid_index.to(device), alphas_cumprod, args.guidance,
                    demo_model.NULL_INDEX, args.huber_c,
                )
            else:
                if args.arch == "dit":
                    xt, t, goal, weights = flow_batch(x0, noise, gen)
                else:
                    t = torch.randint(0, alphas_cumprod.shape[0], (args.batch_size,), generator=gen).to(device)
                    xt = sqrt_ac[t].view(-1, 1, 1, 1) * x0 + sqrt_1mac[t].view(-1, 1, 1, 1) * noise
                    goal, weights = noise, snr_weights[t]
                pred = model(xt, t, y).float()
                loss = (weights * (pred - goal).pow(2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(trainable, args.grad_clip)
        opt.step()
        step += 1
        ema_update(ema_params, model_params, min(args.ema_decay, (1 + step) / (10 + step)))
        if target is not None:
            ema_update(target_params, model_params, args.target_ema_decay)
        loss_hist.append(loss.item())

        if step % args.log_every == 0:
            now = time.time()
            sps = (now - last_log) / max(1, step - last_log_step)
            last_log, last_log_step = now, step
            print(
                f"step {step} loss {loss_hist[-1]:.5f} (avg50 {float(np.mean(loss_hist[-50:])):.5f}) lr {lr:.2e} "
                f"{sps:.3f}s/step elapsed {(now - t_start) / 60:.1f}min",
                flush=True,
            )
        if step % args.save_every == 0:
            save(False)

    save(True)
    print(
        f"done: {step} steps in {(time.time() - t_start) / 60:.1f} min, "
        f"recent loss {float(np.mean(loss_hist[-200:])) if loss_hist else float('nan'):.5f}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
