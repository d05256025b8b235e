"""Residual Tuning on the demo DiT (ComfyUI's Flux class, scaled down): does ``rho_l * x + F_l(x)`` help?

Samples through comfy.sample.sample (what KSampler runs) with the core's residual replace
patches (skip_tuning/residual.py) on a clone of the model. Seeds are paired exactly as in
quality.py (the same labels, initial noise and per-step noise for every variant).

Stages:
  screen   every variant on seed block 0 (250 samples) in every cell (sampler x steps x CFG)
  confirm  plain and the screen's best variant per cell on fresh blocks 1 and 2 (500 samples)
  steps    the two confirmed winners at 4 unguided steps (Euler, Euler a) again at 10 and 25 steps

    python3 benchmarks/residual_dit.py                    # all stages, then the report (about 15 min on 2 cores)
    python3 benchmarks/residual_dit.py --stage screen --shard 0/2 &   # a stage split over two processes
    python3 benchmarks/residual_dit.py --stage screen --shard 1/2     # (then confirm and steps the same way)
    python3 benchmarks/residual_dit.py --report-only --docs docs/results
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import REPO_ROOT, machine_summary, save_samples, set_threads  # noqa: E402

DEFAULT_STORE = os.path.join(REPO_ROOT, "outputs", "benchmarks", "residual_dit")
BLOCK_SIZE = 250
SCHEDULER = "simple"  # what Flux workflows use

# name -> (rho of the first tuned block, rho of the last block, fraction of the depth left untouched).
# Factors compound over the 12 blocks (0.98 on every block leaves 0.78 of the input embedding).
VARIANTS = {
    "plain": (1.0, 1.0, 0.0),
    "all 0.98": (0.98, 0.98, 0.0),
    "all 0.99": (0.99, 0.99, 0.0),
    "all 1.01": (1.01, 1.01, 0.0),
    "all 1.02": (1.02, 1.02, 0.0),
    "0.96 -> 1.0": (0.96, 1.0, 0.0),
    "1.0 -> 0.96": (1.0, 0.96, 0.0),
    "later half 0.95": (0.95, 0.95, 0.5),
    "later half 1.05": (1.05, 1.05, 0.5),
    # Screened at 4 unguided steps only: they lost there by 12-70 FD, every one in every cell.
    "0.9 -> 1.0": (0.9, 1.0, 0.0),
    "1.0 -> 0.9": (1.0, 0.9, 0.0),
    "1.1 -> 1.0": (1.1, 1.0, 0.0),
    "1.0 -> 1.1": (1.0, 1.1, 0.0),
}
STRONG = ("0.9 -> 1.0", "1.0 -> 0.9", "1.1 -> 1.0", "1.0 -> 1.1")
# (sampler, steps, CFG): few steps unguided and guided, and guided at a few more
CELLS = [(sampler, steps, cfg) for steps, cfg in ((4, 1.0), (4, 4.0), (8, 4.0))
         for sampler in ("euler", "dpmpp_2m", "euler_a")]


def screened(cfg):
    return [v for v in VARIANTS if cfg == 1.0 or v not in STRONG]


# Does the confirmed gain last with more steps? The winners at 4 unguided steps, applied at 10 and 25.
STEP_CURVE = [("euler", "all 0.99"), ("euler_a", "0.96 -> 1.0")]
CURVE_STEPS = (10, 25)
SCREEN_BLOCKS = (0,)
CONFIRM_BLOCKS = (1, 2)


def slug(variant: str) -> str:
    return variant.replace(" -> ", "_to_").replace(" ", "_")


def key(sampler, steps, cfg, variant, block) -> str:
    return f"comfy_{sampler}_s{steps}_cfg{cfg:g}_{slug(variant)}_b{block}_n{BLOCK_SIZE}"


class Runner:
    def __init__(self, store: str):
        from _comfy_demo import load_dit_in_comfy

        from skip_tuning_demo import metrics

        self.store = store
        os.makedirs(os.path.join(store, "samples"), exist_ok=True)
        self.patcher, self.net, self.table, self.config = load_dit_in_comfy()
        self.metrics = metrics
        self.classifier = metrics.get_classifier()

    def path(self, name: str) -> str:
        return os.path.join(self.store, "samples", name + ".npz")

    def run(self, sampler, steps, cfg, variant, block):
        from _comfy_demo import comfy_sample_latents, residual_tuned
        from quality import block_seeds

        from skip_tuning import block_factors, find_residual_layout
        from skip_tuning_demo.model import unpack_latents
        from skip_tuning_demo.sampling import make_noise

        name = key(sampler, steps, cfg, variant, block)
        if os.path.exists(self.path(name)):
            return None
        labels, noise_seed, step_seed = block_seeds(block, BLOCK_SIZE)
        noise = make_noise(BLOCK_SIZE, noise_seed)
        n_blocks = len(find_residual_layout(self.patcher.model.diffusion_model).block_keys)
        factors = block_factors(n_blocks, *VARIANTS[variant])
        t0 = time.perf_counter()
        latents = comfy_sample_latents(residual_tuned(self.patcher, factors), self.table, labels, sampler, steps, cfg,
                                       noise, seed=step_seed, scheduler=SCHEDULER, kind="dit")
        images = unpack_latents(latents).clamp(-1, 1)
        seconds = time.perf_counter() - t0
        features = self.metrics.compute_features(images, self.classifier).astype(np.float32)
        predictions = self.metrics.predict(images, self.classifier).numpy().astype(np.int8)
        save_samples(self.path(name), features=features, predictions=predictions,
                     labels=labels.numpy().astype(np.int8), seconds=seconds)
        return name, seconds, float((predictions == labels.numpy()).mean())


def load(store, sampler, steps, cfg, variant, blocks):
    parts = []
    for block in blocks:
        path = os.path.join(store, "samples", key(sampler, steps, cfg, variant, block) + ".npz")
        if not os.path.exists(path):
            return None
        with np.load(path) as data:
            parts.append((data["features"], data["predictions"], data["labels"]))
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


def screen_fds(store, ref, sampler, steps, cfg):
    fds = {}
    for variant in VARIANTS:
        data = load(store, sampler, steps, cfg, variant, SCREEN_BLOCKS)
        if data is not None:
            fds[variant] = ref.fd(data[0])
    return fds


def best_variant(store, ref, sampler, steps, cfg):
    fds = {v: fd for v, fd in screen_fds(store, ref, sampler, steps, cfg).items() if v != "plain"}
    return min(fds, key=fds.get) if fds else None


def jobs(store, stage: str):
    if stage == "screen":
        return [(s, n, c, v, b) for s, n, c in CELLS for v in screened(c) for b in SCREEN_BLOCKS]
    if stage == "steps":
        return [(s, n, 1.0, v, b) for s, variant in STEP_CURVE for n in CURVE_STEPS for v in ("plain", variant)
                for b in CONFIRM_BLOCKS]
    from _stats import Reference, reference

    ref = Reference(*reference())
    out = []
    for s, n, c in CELLS:
        best = best_variant(store, ref, s, n, c)
        for v in ("plain", best) if best else ("plain",):
            out.extend((s, n, c, v, b) for b in CONFIRM_BLOCKS)
    return out


def report(store: str, docs: str | None) -> str:
    from _stats import Reference, paired_bootstrap, paired_interval, paired_verdict, reference
    from quality_report import LABELS

    ref = Reference(*reference())
    lines = [f"### Residual Tuning on the demo DiT: screen (seed block 0, {BLOCK_SIZE} samples per cell, paired)", "",
             "FD by variant (lower is better); `*`: differs from plain beyond the 95% paired-bootstrap interval. "
             f"ComfyUI's KSampler, scheduler `{SCHEDULER}`. Variants: factor of the first tuned block -> the last, "
             "linear over depth; \"later half\" leaves the first half of the 12 blocks at 1. The four strong "
             "ramps were screened without guidance only.", ""]
    names = list(VARIANTS)
    lines.append("| sampler | steps | CFG | " + " | ".join(names) + " |")
    lines.append("|---|---:|---:|" + "---:|" * len(names))
    summary = {"screen": [], "confirm": []}
    for s, n, c in CELLS:
        plain = load(store, s, n, c, "plain", SCREEN_BLOCKS)
        cells = []
        for v in names:
            data = load(store, s, n, c, v, SCREEN_BLOCKS)
            if data is None:
                cells.append("")
                continue
            fd = ref.fd(data[0])
            mark = ""
            if v != "plain" and plain is not None:
                lo, hi = paired_interval(paired_bootstrap(ref, plain[0], data[0], n_boot=200)[2])
                mark = "*" if paired_verdict(lo, hi) != "no significant difference" else ""
            summary["screen"].append(dict(sampler=s, steps=n, cfg=c, variant=v, fd=fd))
            cells.append(f"{fd:.1f}{mark}")
        lines.append(f"| {LABELS.get(s, s)} | {n} | {c:g} | " + " | ".join(cells) + " |")
    lines += ["", "### Confirmation: plain vs the screen's best variant on fresh seeds "
              f"(blocks 1-2, {len(CONFIRM_BLOCKS) * BLOCK_SIZE} samples)", "",
              "| sampler | steps | CFG | best variant | FD plain | FD tuned | delta FD (95% CI) "
              "| accuracy plain -> tuned | verdict |", "|---|---:|---:|---|---:|---:|---|---|---|"]
    for s, n, c in CELLS:
        best = best_variant(store, ref, s, n, c)
        plain = load(store, s, n, c, "plain", CONFIRM_BLOCKS)
        tuned = load(store, s, n, c, best, CONFIRM_BLOCKS) if best else None
        if plain is None or tuned is None:
            continue
        fd_p, fd_t, diffs = paired_bootstrap(ref, plain[0], tuned[0], n_boot=200)
        lo, hi = paired_interval(diffs)
        acc_p, acc_t = float((plain[1] == plain[2]).mean()), float((tuned[1] == tuned[2]).mean())
        verdict = paired_verdict(lo, hi)
        summary["confirm"].append(dict(sampler=s, steps=n, cfg=c, variant=best, fd_plain=fd_p, fd_tuned=fd_t,
                                       lo=lo, hi=hi, verdict=verdict))
        lines.append(f"| {LABELS.get(s, s)} | {n} | {c:g} | {best} | {fd_p:.1f} | {fd_t:.1f} | "
                     f"{fd_t - fd_p:+.1f} ({lo:+.1f} to {hi:+.1f}) | {100 * acc_p:.1f}% -> {100 * acc_t:.1f}% | "
                     f"{verdict} |")
    lines += ["", "### The winners at 4 unguided steps with more steps (blocks 1-2, paired)", "",
              "| sampler | variant | steps | FD plain | FD tuned | delta FD (95% CI) | verdict |",
              "|---|---|---:|---:|---:|---|---|"]
    for s, variant in STEP_CURVE:
        for n in (4, *CURVE_STEPS):
            plain = load(store, s, n, 1.0, "plain", CONFIRM_BLOCKS)
            tuned = load(store, s, n, 1.0, variant, CONFIRM_BLOCKS)
            if plain is None or tuned is None:
                continue
            fd_p, fd_t, diffs = paired_bootstrap(ref, plain[0], tuned[0], n_boot=200)
            lo, hi = paired_interval(diffs)
            summary.setdefault("steps", []).append(dict(sampler=s, variant=variant, steps=n, fd_plain=fd_p,
                                                        fd_tuned=fd_t, lo=lo, hi=hi))
            lines.append(f"| {LABELS.get(s, s)} | {variant} | {n} | {fd_p:.1f} | {fd_t:.1f} | "
                         f"{fd_t - fd_p:+.1f} ({lo:+.1f} to {hi:+.1f}) | {paired_verdict(lo, hi)} |")
    text = "\n".join(lines)
    if docs:
        os.makedirs(docs, exist_ok=True)
        with open(os.path.join(docs, "residual_dit.md"), "w", encoding="utf-8") as f:
            f.write(f"<!-- generated by benchmarks/residual_dit.py from {os.path.relpath(store, REPO_ROOT)} -->\n")
            f.write(text + "\n")
        with open(os.path.join(docs, "residual_dit.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1, default=float)
        plot(summary, os.path.join(docs, "residual_dit.png"))
    return text


def plot(summary: dict, path: str):
    """Left: each variant's screen FD minus plain's, per cell (the strong ramps, 12-70 FD worse, left out).
    Right: plain and the 4-step winners' FD over the step count (fresh seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from quality_report import LABELS

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1.6, 1]})
    shown = [v for v in VARIANTS if v != "plain" and v not in STRONG]
    for s, n, c in CELLS:
        fds = {r["variant"]: r["fd"] for r in summary["screen"] if (r["sampler"], r["steps"], r["cfg"]) == (s, n, c)}
        if "plain" not in fds:
            continue
        left.plot(range(len(shown)), [fds.get(v, np.nan) - fds["plain"] for v in shown], marker="o",
                  linestyle="-" if c == 1.0 else "--", label=f"{LABELS.get(s, s)}, {n} steps, CFG {c:g}")
    left.axhline(0, color="black", linewidth=0.8)
    left.set_xticks(range(len(shown)), shown, rotation=30, ha="right", fontsize=8)
    left.set_ylabel("FD tuned - plain (screen, 250 samples)")
    left.set_title("Screen: below 0 is better than plain", fontsize=10)
    left.legend(fontsize=7)
    left.grid(alpha=0.3)
    for s, variant in STEP_CURVE:
        rows = sorted((r for r in summary.get("steps", []) if r["sampler"] == s), key=lambda r: r["steps"])
        if not rows:
            continue
        steps = [r["steps"] for r in rows]
        line = right.plot(steps, [r["fd_plain"] for r in rows], marker="o", label=f"{LABELS.get(s, s)}, plain")[0]
        right.plot(steps, [r["fd_tuned"] for r in rows], marker="s", linestyle="--", color=line.get_color(),
                   label=f"{LABELS.get(s, s)}, {variant}")
    right.set_xticks(list((4, *CURVE_STEPS)))
    right.set_xlabel("steps (no guidance)")
    right.set_ylabel("FD (500 fresh paired samples)")
    right.set_title("The 4-step winners with more steps", fontsize=10)
    right.legend(fontsize=7)
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DEFAULT_STORE, help="result store (resumable)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shard", default="0/1", help="i/n: run every n-th job from i (parallel processes)")
    parser.add_argument("--stage", choices=["screen", "confirm", "steps"], help="run one stage only (default: all)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--docs", help="write residual_dit.md and .json here")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    shard, shards = (int(x) for x in args.shard.split("/"))
    if not args.report_only:
        print(f"residual tuning, demo DiT, store {args.out}; {machine_summary()}", flush=True)
        runner = Runner(args.out)
        stages = (args.stage,) if args.stage else ("screen", "confirm", "steps")
        for stage in stages:
            todo = jobs(args.out, stage)[shard::shards]
            print(f"{stage}: {len(todo)} jobs", flush=True)
            for k, job in enumerate(todo):
                with torch.inference_mode():
                    result = runner.run(*job)
                if result:
                    print(f"  [{k + 1}/{len(todo)}] {result[0]}: {result[1]:.1f} s, accuracy {result[2]:.3f}",
                          flush=True)
        if shards > 1 or args.stage in ("screen", "confirm"):
            return 0
    print(report(args.out, args.docs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
