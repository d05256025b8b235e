"""Per-step U-Net cost of Skip Tuning on full-size SD1.5 and SDXL U-Nets (random weights, CPU).

One U-Net forward is one sampler step (per CFG half). Every round runs each variant once,
in a rotating order, so slow drift of the machine hits all variants alike; the report gives
the median time per variant, the median of the per-round ratios to plain, a bootstrap 95%
interval of that ratio, and the activation high-water mark of one forward (tensor storage
created during the call, measured exactly with a dispatch mode; weights excluded).

Paths:
  a1111   SkipScalingHooks (forward pre-hooks on output_blocks) on the U-Net A1111 runs:
          ldm's UNetModel for SD1.5 (stable-diffusion-sdkit); for SDXL (sgm, not on PyPI)
          ComfyUI's SDXL modules driven by the same decoder loop as sgm's
          (h = cat([h, hs.pop()]); h = block(h, emb, context)).
  comfy   make_output_block_patch registered as transformer_options["patches"]
          ["output_block_patch"] of ComfyUI's UNetModel (what the node and Forge install),
          without and with a sigma window; and ComfyUI's built-in FreeU node (default
          values) as the peer.

    python3 benchmarks/overhead.py --arch sd15 --threads 2
    python3 benchmarks/overhead.py --arch sdxl --threads 2 --rounds 12

SDXL in fp32 needs about 11 GB of RAM (2.6 B parameters); --dtype bf16 halves it.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import statistics
import sys
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
from _common import (  # noqa: E402
    PeakTensorMemory,
    comfyui_version,
    fill_random_,
    import_comfy,
    machine_summary,
    set_threads,
)

from skip_tuning import SkipScalingHooks, make_output_block_patch, rho_schedule  # noqa: E402

# Full-size U-Net configurations as ComfyUI's model detection builds them.
COMFY_CONFIGS = {
    "sd15": dict(
        image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2, 2],
        channel_mult=[1, 2, 4, 4], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_middle=1,
        transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], use_linear_in_transformer=False,
        context_dim=768, num_heads=8, use_spatial_transformer=True, legacy=False, adm_in_channels=None,
        use_checkpoint=False, use_temporal_attention=False, use_temporal_resblock=False,
    ),
    "sdxl": dict(
        image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2],
        channel_mult=[1, 2, 4], transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_middle=10,
        transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], use_linear_in_transformer=True,
        context_dim=2048, num_head_channels=64, use_spatial_transformer=True, legacy=False,
        num_classes="sequential", adm_in_channels=2816, use_checkpoint=False,
        use_temporal_attention=False, use_temporal_resblock=False,
    ),
}
CONTEXT = {"sd15": (77, 768), "sdxl": (77, 2048)}
ADM = {"sd15": None, "sdxl": 2816}
# SD1.5 as A1111 builds it from v1-inference.yaml (ldm).
LDM_SD15 = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
    num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8, use_spatial_transformer=True,
    transformer_depth=1, context_dim=768, use_checkpoint=False, legacy=False,
)
FREEU_DEFAULTS = (1.1, 1.2, 0.9, 0.2)  # ComfyUI FreeU node defaults b1, b2, s1, s2


def build_comfy_unet(arch: str, dtype: torch.dtype):
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    unet = UNetModel(**COMFY_CONFIGS[arch], dtype=dtype, device="cpu", operations=comfy.ops.disable_weight_init)
    fill_random_(unet)
    return unet.eval()


def build_ldm_unet(dtype: torch.dtype):
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    unet = UNetModel(**LDM_SD15)
    fill_random_(unet)
    return unet.to(dtype).eval()


def sgm_style_forward(unet, x, timesteps, context, y=None):
    """The decoder loop of A1111's ldm/sgm UNetModel, run over ComfyUI's modules.

    Every block is called as a module, so forward pre-hooks on output_blocks fire exactly
    as they do in A1111 (ComfyUI's own forward iterates the layers and bypasses them).
    """
    from comfy.ldm.modules.diffusionmodules.openaimodel import timestep_embedding

    emb = unet.time_embed(timestep_embedding(timesteps, unet.model_channels).to(x.dtype))
    if unet.num_classes is not None:
        emb = emb + unet.label_emb(y)
    skips = []
    h = x
    for block in unet.input_blocks:
        h = block(h, emb, context)
        skips.append(h)
    h = unet.middle_block(h, emb, context)
    for block in unet.output_blocks:
        h = torch.cat([h, skips.pop()], dim=1)
        h = block(h, emb, context)
    return unet.out(h)


class _PatchCollector:
    """Stands in for a ModelPatcher so a stock node's patch() hands over its patch function."""

    def __init__(self, model_channels: int):
        self.model = SimpleNamespace(model_config=SimpleNamespace(unet_config={"model_channels": model_channels}))
        self.patches = []

    def clone(self):
        return self

    def set_model_output_block_patch(self, fn):
        self.patches.append(fn)


def freeu_patch(model_channels: int):
    from comfy_extras.nodes_freelunch import FreeU

    collector = _PatchCollector(model_channels)
    FreeU().patch(collector, *FREEU_DEFAULTS)
    return collector.patches[0]


def make_inputs(arch: str, latent: int, batch: int, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, latent, latent, generator=gen).to(dtype)
    tokens, width = CONTEXT[arch]
    context = torch.randn(batch, tokens, width, generator=gen).to(dtype)
    y = None if ADM[arch] is None else torch.randn(batch, ADM[arch], generator=gen).to(dtype)
    timesteps = torch.full((batch,), 500.0)
    sigmas = torch.full((batch,), 4.0)
    return x, timesteps, context, y, sigmas


def variants_for(arch: str, path: str, dtype: torch.dtype, latent: int, batch: int, rho_bottom: float):
    """(model, {name: one forward}, {name: () -> the variant's patch calls of one forward, as thunks})."""
    x, timesteps, context, y, sigmas = make_inputs(arch, latent, batch, dtype)
    if path == "a1111":
        if arch == "sd15":
            unet = build_ldm_unet(dtype)

            def forward():
                return unet(x, timesteps, context=context)
        else:
            unet = build_comfy_unet(arch, dtype)

            def forward():
                return sgm_style_forward(unet, x, timesteps, context, y)

        rhos = rho_schedule(len(unet.output_blocks), rho_bottom)
        hooks = SkipScalingHooks(unet, rhos)

        def hooked():
            with hooks:
                return forward()

        def hook_calls():
            # The block inputs of one forward, then the hook functions alone on them.
            captured = []
            handles = [block.register_forward_pre_hook(lambda m, a, i=i: captured.append((i, m, a)))
                       for i, block in enumerate(unet.output_blocks)]
            try:
                forward()
            finally:
                for handle in handles:
                    handle.remove()
            return [functools.partial(hooks._hook_for(i), m, a) for i, m, a in captured if rhos[i] != 1.0]

        return unet, {"plain": forward, "skip_tuning": hooked}, {"skip_tuning": hook_calls}

    unet = build_comfy_unet(arch, dtype)
    rhos = rho_schedule(len(unet.output_blocks), rho_bottom)

    def run_with(patches):
        def forward():
            options = {"patches": {"output_block_patch": patches} if patches else {}, "sigmas": sigmas}
            return unet(x, timesteps, context, y, transformer_options=options)

        return forward

    patches = {
        "skip_tuning": make_output_block_patch(rhos),
        "skip_tuning_window": make_output_block_patch(rhos, sigma_range=(0.0, 1000.0)),
        "freeu": freeu_patch(unet.model_channels),
    }
    variants = {"plain": run_with([])}
    variants.update({name: run_with([fn]) for name, fn in patches.items()})

    def patch_calls(fn):
        def capture():
            # The (h, hsp, transformer_options) of one forward, then the patch alone on them.
            captured = []

            def recorder(h, hsp, options):
                captured.append((h.clone(), hsp.clone(), dict(options)))
                return fn(h, hsp, options)

            run_with([recorder])()
            return [(lambda a=a: fn(*a)) for a in captured]

        return capture

    return unet, variants, {name: patch_calls(fn) for name, fn in patches.items()}


def bootstrap_ci(values, stat=statistics.median, n_boot=2000, seed=0):
    rng = random.Random(seed)
    stats = sorted(stat([rng.choice(values) for _ in values]) for _ in range(n_boot))
    return stats[int(0.025 * n_boot)], stats[int(0.975 * n_boot) - 1]


def measure(variants: dict, components: dict, rounds: int, warmup: int, self_time_reps: int = 15):
    names = list(variants)
    times = {name: [] for name in names}
    cpu_times = {name: [] for name in names}
    with torch.inference_mode():
        for r in range(warmup + rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                c0, t0 = time.process_time(), time.perf_counter()
                variants[name]()
                elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
                if r >= warmup:
                    times[name].append(elapsed)
                    cpu_times[name].append(cpu)
            print(f"  round {r + 1}/{warmup + rounds}: "
                  + ", ".join(f"{n} {times[n][-1] * 1e3:.0f} ms (cpu {cpu_times[n][-1] * 1e3:.0f})"
                              for n in names if times[n]), flush=True)
        peaks, outputs = {}, {}
        for name in names:
            tracker = PeakTensorMemory()
            with tracker:
                outputs[name] = variants[name]()
            peaks[name] = tracker.peak
        # Self time of the patch: its calls of one forward, timed alone in CPU time (robust to machine noise).
        self_time = {"plain": 0.0}
        for name, capture in components.items():
            total = 0.0
            for call in capture():
                reps = []
                for _ in range(self_time_reps):
                    t0 = time.process_time()
                    call()
                    reps.append(time.process_time() - t0)
                total += statistics.median(reps)
            self_time[name] = total
    # Proof that each variant is live: its output differs from the plain forward's.
    changed = {name: not torch.equal(outputs[name], outputs["plain"]) for name in names}
    return times, cpu_times, peaks, changed, self_time


def summarise(arch, path, times, cpu_times, peaks, changed, self_time):
    rows = []
    base = times["plain"]
    cpu_base = cpu_times["plain"]
    for name, values in times.items():
        ratios = [v / b for v, b in zip(values, base)]
        cpu_ratios = [v / b for v, b in zip(cpu_times[name], cpu_base)]
        lo, hi = bootstrap_ci(ratios) if name != "plain" else (1.0, 1.0)
        cpu_lo, cpu_hi = bootstrap_ci(cpu_ratios) if name != "plain" else (1.0, 1.0)
        rows.append({
            "arch": arch, "path": path, "variant": name, "rounds": len(values),
            "median_ms": statistics.median(values) * 1e3,
            "ratio_of_medians": statistics.median(values) / statistics.median(base),
            "paired_ratio": statistics.median(ratios), "ci95": [lo, hi],
            "median_cpu_ms": statistics.median(cpu_times[name]) * 1e3,
            "cpu_paired_ratio": statistics.median(cpu_ratios), "cpu_ci95": [cpu_lo, cpu_hi],
            "peak_activation_mb": peaks[name] / 2**20,
            "peak_vs_plain_mb": (peaks[name] - peaks["plain"]) / 2**20,
            "changes_output": changed[name],
            "patch_self_ms": self_time[name] * 1e3,
            "patch_self_fraction": self_time[name] / statistics.median(cpu_base),
        })
    return rows


def markdown(rows) -> str:
    lines = [
        "| U-Net | path | variant | wall ms/step | wall ratio (95% CI) | CPU ms/step | CPU-time ratio (95% CI) |"
        " patch self time ms/step (% of step) | peak activations MB (vs plain) | output changed |",
        "|---|---|---|---:|---|---:|---|---:|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['arch']} | {row['path']} | {row['variant']} | {row['median_ms']:.0f} | "
            f"{row['paired_ratio']:.3f} ({row['ci95'][0]:.3f}-{row['ci95'][1]:.3f}) | {row['median_cpu_ms']:.0f} | "
            f"{row['cpu_paired_ratio']:.3f} ({row['cpu_ci95'][0]:.3f}-{row['cpu_ci95'][1]:.3f}) | "
            f"{row['patch_self_ms']:.2f} ({100 * row['patch_self_fraction']:.3f}%) | "
            f"{row['peak_activation_mb']:.1f} ({row['peak_vs_plain_mb']:+.2f}) | "
            f"{'-' if row['variant'] == 'plain' else ('yes' if row['changes_output'] else 'NO')} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=["sd15", "sdxl"], nargs="+", default=["sd15", "sdxl"])
    parser.add_argument("--path", choices=["a1111", "comfy"], nargs="+", default=["a1111", "comfy"])
    parser.add_argument("--latent", type=int, default=32, help="latent side (32 = 256 px images)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rho-bottom", type=float, default=0.8)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="append the rows to this JSON file")
    args = parser.parse_args(argv)

    set_threads(args.threads)
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    has_comfy = import_comfy()
    print(f"machine: {machine_summary()}; ComfyUI: {comfyui_version() if has_comfy else 'absent'}", flush=True)

    rows = []
    for arch in args.arch:
        for path in args.path:
            if not has_comfy and (path == "comfy" or arch == "sdxl"):
                print(f"skipping {arch}/{path}: needs a ComfyUI checkout ($COMFYUI_PATH)")
                continue
            print(f"{arch} / {path}: building the U-Net ({args.dtype}, random weights)", flush=True)
            unet, variants, components = variants_for(arch, path, dtype, args.latent, args.batch, args.rho_bottom)
            n_params = sum(p.numel() for p in unet.parameters())
            print(f"  {n_params / 1e6:.0f} M parameters, {len(unet.output_blocks)} long skips", flush=True)
            times, cpu_times, peaks, changed, self_time = measure(variants, components, args.rounds, args.warmup)
            rows += summarise(arch, path, times, cpu_times, peaks, changed, self_time)
            del unet, variants, components

    print()
    print(f"latent {args.batch}x4x{args.latent}x{args.latent}, {args.dtype}, rho_bottom {args.rho_bottom}, "
          f"{args.rounds} interleaved rounds; {machine_summary()}")
    print(markdown(rows))
    if args.json:
        existing = []
        if os.path.exists(args.json):
            with open(args.json, encoding="utf-8") as f:
                existing = json.load(f)
        meta = {"latent": args.latent, "batch": args.batch, "dtype": args.dtype, "machine": machine_summary()}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(existing + [dict(row, **meta) for row in rows], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
