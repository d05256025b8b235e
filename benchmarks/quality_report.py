"""Tables and plots from the store written by benchmarks/quality.py.

    python3 benchmarks/quality_report.py                       # prints the markdown
    python3 benchmarks/quality_report.py --docs docs/results   # also writes quality_<backend>.md and PNGs there
    python3 benchmarks/quality_report.py --model uvit --docs docs/results   # quality_uvit_<backend>.md, ...

FD = Frechet distance between the shipped classifier's 128-d features of the samples and of
the 10k Fashion-MNIST test images (lower is better); accuracy = the classifier's agreement
with the requested class. Differences are paired (the same seeds for every configuration);
their 95% intervals come from a paired bootstrap over seeds.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import sys

# Thousands of 128x128 eigensolves: one BLAS thread is about 6x faster than two fighting over small
# matrices (and than sharing the cores with a running benchmark). Must be set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402
from _common import REPO_ROOT  # noqa: E402
from _stats import Reference, paired_bootstrap, paired_interval, paired_verdict, reference  # noqa: E402
from quality import DEFAULT_SCHEDULER, MODELS, REFERENCE_STEPS, default_store  # noqa: E402

LABELS = {
    "euler": "Euler", "heun": "Heun", "dpmpp_2m": "DPM++ 2M", "unipc": "UniPC", "ddim": "DDIM",
    "euler_a": "Euler a", "dpmpp_2m_sde": "DPM++ 2M SDE", "lms": "LMS", "lcm": "LCM", "dpmpp_sde": "DPM++ SDE",
    "unipc_bh2": "UniPC bh2", "deis": "DEIS", "res_multistep": "res_multistep", "ipndm": "iPNDM", "er_sde": "ER-SDE",
    "euler_cfg_pp": "Euler CFG++", "dpmpp_2m_cfg_pp": "DPM++ 2M CFG++",
}
SAMPLER_ORDER = {sampler: i for i, sampler in enumerate(LABELS)}  # rows, panels and plot colours
FAMILY = {
    "euler": "single-step ODE", "heun": "single-step ODE (2nd order)", "ddim": "single-step ODE",
    "dpmpp_2m": "multistep ODE", "unipc": "multistep ODE", "euler_a": "stochastic (ancestral)",
    "dpmpp_2m_sde": "stochastic (SDE)", "lcm": "consistency (LCM)", "dpmpp_sde": "stochastic (SDE)",
    "unipc_bh2": "multistep ODE", "deis": "multistep ODE", "res_multistep": "multistep ODE", "ipndm": "multistep ODE",
    "er_sde": "stochastic (SDE)", "euler_cfg_pp": "single-step ODE, CFG++", "dpmpp_2m_cfg_pp": "multistep ODE, CFG++",
}
KEY = re.compile(r"^(?P<backend>[a-z]+)_(?P<sampler>[a-z0-9_]+)_s(?P<steps>\d+)_cfg(?P<cfg>[\d.]+)"
                 r"_rho(?P<rho>[\d.]+)_b(?P<block>\d+)_n(?P<n>\d+)(?:_(?P<scheduler>[a-z0-9_]+))?$")
N_BOOT = 200
EQUAL_QUALITY_STEPS = (4, 6, 10)  # the figure says what few Skip-Tuned steps are worth in plain steps


class Store:
    """The samples of one scheduler (quality.py's keys name it unless it is KSampler's default)."""

    def __init__(self, path: str, scheduler: str = DEFAULT_SCHEDULER):
        self.path = path
        self.scheduler = scheduler
        self.entries = {}
        for file in glob.glob(os.path.join(path, "samples", "*.npz")):
            match = KEY.match(os.path.basename(file)[:-4])
            if not match or (match["scheduler"] or DEFAULT_SCHEDULER) != scheduler:
                continue
            g = match.groupdict()
            key = (g["backend"], g["sampler"], int(g["steps"]), float(g["cfg"]), float(g["rho"]), int(g["block"]))
            self.entries[key] = file
        self._cache = {}

    def get(self, backend, sampler, steps, cfg, rho, blocks):
        """(features, predictions, labels) concatenated over blocks in block order; None if any is missing."""
        parts = []
        for block in blocks:
            file = self.entries.get((backend, sampler, steps, float(cfg), float(rho), block))
            if file is None:
                return None
            if file not in self._cache:
                with np.load(file) as data:
                    self._cache[file] = (data["features"].astype(np.float64), data["predictions"].astype(np.int64),
                                         data["labels"].astype(np.int64), float(data["seconds"]))
            parts.append(self._cache[file])
        return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                np.concatenate([p[2] for p in parts]))

    def values(self, field):
        index = {"backend": 0, "sampler": 1, "steps": 2, "cfg": 3, "rho": 4, "block": 5}[field]
        return sorted({key[index] for key in self.entries})

    def blocks(self, backend, sampler, steps, cfg, rho):
        return sorted(k[5] for k in self.entries if k[:5] == (backend, sampler, steps, float(cfg), float(rho)))


class Report:
    def __init__(self, store: Store, backend: str):
        self.store = store
        self.backend = backend
        self.ref = Reference(*reference())
        self.lines = []
        self.data = {}  # machine-readable summary
        self.tuned_curves = {}
        self.curve_samples = {}

    def out(self, text=""):
        self.lines.append(text)

    # -- screen: block 0, every rho ------------------------------------------------------------
    def screen(self):
        b = self.backend
        keys = [k for k in self.store.entries if k[0] == b and k[5] == 0]
        groups = sorted({(k[1], k[3], k[2]) for k in keys}, key=lambda g: (g[1], SAMPLER_ORDER[g[0]], g[2]))
        if not groups:
            return {}
        rhos = sorted({k[4] for k in keys})
        best = {}
        self.out(f"### Screen: FD by rho_bottom (seed block 0, {self._n(0)} samples per cell, paired)")
        self.out()
        self.out("Lower is better. **Bold**: the row's best; `*`: differs from plain (rho 1.00) beyond the "
                 "95% paired-bootstrap interval.")
        self.out()
        for cfg in sorted({g[1] for g in groups}):
            self.out(f"CFG {cfg:g}:")
            self.out()
            self.out("| sampler | steps | " + " | ".join(f"{r:.2f}" for r in rhos) + " |")
            self.out("|---|---:|" + "---:|" * len(rhos))
            for sampler, c, steps in groups:
                if c != cfg:
                    continue
                plain = self.store.get(b, sampler, steps, cfg, 1.0, [0])
                cells, fds = [], {}
                for rho in rhos:
                    run = self.store.get(b, sampler, steps, cfg, rho, [0])
                    if run is None:
                        cells.append("")
                        continue
                    fd = self.ref.fd(run[0])
                    fds[rho] = fd
                    mark = ""
                    if plain is not None and rho != 1.0:
                        _, _, diffs = paired_bootstrap(self.ref, plain[0], run[0], n_boot=N_BOOT // 2)
                        lo, hi = paired_interval(diffs)
                        mark = "*" if (hi < 0 or lo > 0) else ""
                    cells.append((fd, mark))
                top = min(fds, key=fds.get) if fds else None
                tuned = {r: f for r, f in fds.items() if r != 1.0}
                best[(sampler, steps, cfg)] = (top, fds, min(tuned, key=tuned.get) if tuned else None)
                row = []
                for rho, cell in zip(rhos, cells):
                    if cell == "":
                        row.append("")
                        continue
                    fd, mark = cell
                    text = f"{fd:.1f}{mark}"
                    row.append(f"**{text}**" if rho == top else text)
                self.out(f"| {LABELS.get(sampler, sampler)} | {steps} | " + " | ".join(row) + " |")
            self.out()
        self.data["screen"] = {f"{s}/{n}/{c:g}": {"best_rho": v[0], "best_tuned_rho": v[2],
                                                  "fd": {f"{r:.2f}": f for r, f in v[1].items()}}
                               for (s, n, c), v in best.items()}
        return best

    def _n(self, block):
        for key, file in self.store.entries.items():
            if key[5] == block:
                with np.load(file) as data:
                    return int(data["labels"].shape[0])
        return 0

    # -- confirmation on fresh blocks --------------------------------------------------------------
    def confirm(self, best):
        b = self.backend
        rows = []
        order = sorted(best.items(), key=lambda kv: (kv[0][2], SAMPLER_ORDER[kv[0][0]], kv[0][1]))
        for (sampler, steps, cfg), (_, fds, _) in order:
            plain_blocks = set(self.store.blocks(b, sampler, steps, cfg, 1.0)) - {0}
            # The screen's best among the rhos measured again on fresh seeds (probes past the grid's
            # ends are screened only), on the fresh blocks both have (the 4-, 6- and 10-step cells have 3,
            # the rest of the grid 1).
            fresh = {r: sorted(plain_blocks & set(self.store.blocks(b, sampler, steps, cfg, r)))
                     for r in fds if r != 1.0}
            confirmed = [r for r, blocks in fresh.items() if blocks]
            if not confirmed:
                continue
            rho = min(confirmed, key=fds.get)
            blocks = fresh[rho]
            plain = self.store.get(b, sampler, steps, cfg, 1.0, blocks)
            tuned = self.store.get(b, sampler, steps, cfg, rho, blocks)
            if plain is None or tuned is None:
                continue
            fd_p, fd_t, diffs = paired_bootstrap(self.ref, plain[0], tuned[0], n_boot=N_BOOT)
            lo, hi = paired_interval(diffs)
            acc_p = float((plain[1] == plain[2]).mean())
            acc_t = float((tuned[1] == tuned[2]).mean())
            block_fds = [self.ref.fd(self.store.get(b, sampler, steps, cfg, 1.0, [x])[0]) for x in blocks]
            rows.append(dict(sampler=sampler, steps=steps, cfg=cfg, rho=rho, n=len(plain[2]), fd_plain=fd_p,
                             fd_tuned=fd_t, lo=lo, hi=hi, acc_plain=acc_p, acc_tuned=acc_t,
                             block_fds=block_fds, verdict=paired_verdict(lo, hi)))
        if not rows:
            return rows
        self.out("### Headline: plain vs the screened best rho_bottom on fresh seeds")
        self.out()
        self.out("The best rho_bottom != 1 of the screen (seed block 0) among those also run on other seed blocks, "
                 "measured again there, on seeds it was not chosen on. Delta FD = tuned - plain with its 95% "
                 "paired-bootstrap interval; verdict \"better\"/\"worse\" only where that interval excludes 0. "
                 "FDs are comparable only between rows with the same number of samples (small-sample FD is "
                 "biased upward).")
        self.out()
        self.out("| CFG | sampler | steps | samples | FD plain | best rho | FD tuned | delta FD (95% CI) "
                 "| accuracy plain -> tuned | verdict |")
        self.out("|---:|---|---:|---:|---:|---:|---:|---|---|---|")
        for r in rows:
            name = LABELS.get(r["sampler"], r["sampler"])
            delta = f"{r['fd_tuned'] - r['fd_plain']:+.1f} ({r['lo']:+.1f} to {r['hi']:+.1f})"
            accuracy = f"{100 * r['acc_plain']:.1f}% -> {100 * r['acc_tuned']:.1f}%"
            self.out(f"| {r['cfg']:g} | {name} | {r['steps']} | {r['n']} | {r['fd_plain']:.1f} | {r['rho']:.2f} | "
                     f"{r['fd_tuned']:.1f} | {delta} | {accuracy} | {r['verdict']} |")
        self.out()
        self.summary(rows)
        self.data["headline"] = rows
        return rows

    def summary(self, rows):
        """The headline table as sampler x steps matrices, one per CFG scale."""
        self.out("### Summary: the best rho_bottom and its delta FD on fresh seeds")
        self.out()
        self.out("Each cell: the screen's best `rho_bottom` != 1 and delta FD = tuned - plain on fresh paired seeds "
                 "(the number of samples is in the headline table); **bold** where the 95% interval excludes 0.")
        self.out()
        for cfg in sorted({r["cfg"] for r in rows}):
            cells = {(r["sampler"], r["steps"]): r for r in rows if r["cfg"] == cfg}
            steps_all = sorted({steps for _, steps in cells})
            self.out(f"CFG {cfg:g}:")
            self.out()
            self.out("| sampler | " + " | ".join(f"{s} steps" for s in steps_all) + " |")
            self.out("|---|" + "---|" * len(steps_all))
            for sampler in sorted({s for s, _ in cells}, key=SAMPLER_ORDER.get):
                row = []
                for steps in steps_all:
                    r = cells.get((sampler, steps))
                    if r is None:
                        row.append("")
                        continue
                    delta = f"{r['fd_tuned'] - r['fd_plain']:+.1f}"
                    significant = r["verdict"] != "no significant difference"
                    row.append(f"{r['rho']:.2f}: " + (f"**{delta}**" if significant else delta))
                self.out(f"| {LABELS[sampler]} | " + " | ".join(row) + " |")
            self.out()

    def spread(self, rows):
        if not rows:
            return
        sds = [float(np.std(r["block_fds"], ddof=1)) for r in rows if len(r["block_fds"]) > 1]
        widths = {}
        for r in rows:
            widths.setdefault(r["n"], []).append((r["hi"] - r["lo"]) / 2)
        largest = [r for r in rows if r["n"] == max(widths)]
        n_block = self._n(1)
        boot_sd = []
        for r in largest[:6]:
            blocks = [x for x in self.store.blocks(self.backend, r["sampler"], r["steps"], r["cfg"], 1.0) if x != 0]
            f = self.store.get(self.backend, r["sampler"], r["steps"], r["cfg"], 1.0, blocks)[0]
            rng = np.random.default_rng(1)
            boot_sd.append(float(np.std([self.ref.fd(f[rng.integers(0, len(f), len(f))]) for _ in range(100)])))
        self.out("### Seed-to-seed spread")
        self.out()
        if sds:
            self.out(f"- The same configuration on disjoint seed sets of {n_block}: FD standard deviation "
                     f"{np.median(sds):.2f} (median over {len(sds)} configurations; "
                     f"range {min(sds):.2f}-{max(sds):.2f}).")
        if boot_sd:
            self.out(f"- Bootstrap standard deviation of one FD at {largest[0]['n']} samples: "
                     f"about {np.median(boot_sd):.2f}.")
        for n in sorted(widths, reverse=True):
            self.out(f"- Paired differences are much tighter, because both sides use the same seeds: the 95% "
                     f"interval of tuned - plain at {n} samples is +/- {np.median(widths[n]):.2f} "
                     f"(median half-width over {len(widths[n])} rows).")
        self.out("- Small-sample FD is biased upward (by roughly the same amount for every configuration at the "
                 "same n), so compare FDs only at equal n; the tables do.")
        self.out()
        self.data["spread"] = {"block_sd_median": float(np.median(sds)) if sds else None,
                               "bootstrap_sd_median": float(np.median(boot_sd)) if boot_sd else None,
                               "paired_ci_halfwidth_median": {str(n): float(np.median(w)) for n, w in widths.items()}}

    # -- step curves and equal quality ------------------------------------------------------------
    def curves(self, rows):
        """Plain FD vs steps per (sampler, CFG), on the fresh seed blocks plain has at every step count."""
        b = self.backend
        curves, curve_blocks = {}, {}
        for sampler in self.store.values("sampler"):
            for cfg in self.store.values("cfg"):
                fresh = {steps: set(self.store.blocks(b, sampler, steps, cfg, 1.0)) - {0}
                         for steps in self.store.values("steps")}
                fresh = {steps: blocks for steps, blocks in fresh.items() if blocks}
                if len(fresh) < 4:
                    continue
                blocks = sorted(set.intersection(*fresh.values()))
                if not blocks:
                    continue
                curves[(sampler, cfg)] = {steps: self.ref.fd(self.store.get(b, sampler, steps, cfg, 1.0, blocks)[0])
                                          for steps in fresh}
                curve_blocks[(sampler, cfg)] = blocks
        tuned_curves = {}
        for (sampler, cfg), plain in sorted(curves.items()):
            rho = next((r["rho"] for r in rows if (r["sampler"], r["cfg"], r["steps"]) == (sampler, cfg, 10)), None)
            if rho is None:
                continue
            blocks = curve_blocks[(sampler, cfg)]
            points = {}
            for steps in sorted(plain):
                if not set(blocks) <= set(self.store.blocks(b, sampler, steps, cfg, rho)):
                    continue
                base = self.store.get(b, sampler, steps, cfg, 1.0, blocks)
                run = self.store.get(b, sampler, steps, cfg, rho, blocks)
                fd_p, fd_t, diffs = paired_bootstrap(self.ref, base[0], run[0], n_boot=N_BOOT)
                lo, hi = paired_interval(diffs)
                points[steps] = dict(fd_plain=fd_p, fd_tuned=fd_t, lo=lo, hi=hi,
                                     acc_plain=float((base[1] == base[2]).mean()),
                                     acc_tuned=float((run[1] == run[2]).mean()))
            if len(points) >= 3:
                tuned_curves[(sampler, cfg)] = (rho, points)
        for (sampler, cfg), (rho, points) in tuned_curves.items():
            n = len(curve_blocks[(sampler, cfg)]) * self._n(1)
            self.out(f"### FD vs steps, {LABELS[sampler]}, CFG {cfg:g}: plain vs rho_bottom {rho:.2f} "
                     f"(the best at 10 steps), {n} samples, paired")
            self.out()
            self.out("| steps | FD plain | FD tuned | delta (95% CI) | accuracy plain -> tuned |")
            self.out("|---:|---:|---:|---|---|")
            for steps, p in sorted(points.items()):
                delta = p["fd_tuned"] - p["fd_plain"]
                self.out(f"| {steps} | {p['fd_plain']:.1f} | {p['fd_tuned']:.1f} | {delta:+.1f} "
                         f"({p['lo']:+.1f} to {p['hi']:+.1f}) | {100 * p['acc_plain']:.1f}% -> "
                         f"{100 * p['acc_tuned']:.1f}% |")
            self.out()
        self.tuned_curves = tuned_curves
        self.curve_samples = {key: len(blocks) * self._n(1) for key, blocks in curve_blocks.items()}
        results = []
        for (sampler, cfg), plain in sorted(curves.items()):
            blocks = curve_blocks[(sampler, cfg)]
            # Every confirmed 4-, 6- and 10-step row, not only the wins: "plain needs fewer steps" is an
            # answer too. The tuned FD is taken on the curve's seeds, so that both FDs have the same n.
            for r in rows:
                if (r["sampler"], r["cfg"]) != (sampler, cfg) or r["steps"] not in EQUAL_QUALITY_STEPS:
                    continue
                tuned = self.store.get(b, sampler, r["steps"], cfg, r["rho"], blocks)
                if tuned is None:
                    continue
                fd_tuned = self.ref.fd(tuned[0])
                results.append(dict(sampler=sampler, cfg=cfg, steps=r["steps"], rho=r["rho"], n=len(tuned[2]),
                                    fd_tuned=fd_tuned, verdict=r["verdict"],
                                    match=equal_quality_steps(plain, fd_tuned)))
        if results:
            self.out("### Equal quality: plain steps needed to match Skip-Tuned sampling")
            self.out()
            self.out("Plain FD is interpolated linearly in log(steps) between measured step counts "
                     f"(4, 6, 8, 10, 15, 25, and {REFERENCE_STEPS} where measured), on the seeds plain has at "
                     "every step count. A Skip-Tuned setting that did not beat plain needs about its own step "
                     "count or fewer: no saving. The verdict is the headline table's.")
            self.out()
            self.out("| CFG | sampler | Skip-Tuned steps (rho) | samples | its FD | vs plain, same steps "
                     "| plain steps for the same FD | plain FD at the most steps measured |")
            self.out("|---:|---|---|---:|---:|---|---|---:|")
            for r in results:
                curve = curves[(r["sampler"], r["cfg"])]
                most = max(curve)
                self.out(f"| {r['cfg']:g} | {LABELS[r['sampler']]} | {r['steps']} ({r['rho']:.2f}) | {r['n']} | "
                         f"{r['fd_tuned']:.1f} | {r['verdict']} | {describe_match(r['match'], r['steps'])} "
                         f"| {curve[most]:.1f} ({most} steps) |")
            self.out()
        self.data["curves"] = {f"{s}/{c:g}": {str(k): v for k, v in p.items()} for (s, c), p in curves.items()}
        self.data["equal_quality"] = results
        self.data["tuned_curves"] = {f"{s}/{c:g}": {"rho": rho, "points": {str(k): v for k, v in pts.items()}}
                                     for (s, c), (rho, pts) in tuned_curves.items()}
        return curves, results

    def model_check(self):
        """The bundled model at the reference step count: does it make garments of the requested class?"""
        b = self.backend
        found = []
        for sampler in self.store.values("sampler"):
            for cfg in self.store.values("cfg"):
                blocks = self.store.blocks(b, sampler, REFERENCE_STEPS, cfg, 1.0)
                if blocks:
                    run = self.store.get(b, sampler, REFERENCE_STEPS, cfg, 1.0, blocks)
                    per_class = [float((run[1][run[2] == c] == c).mean()) for c in range(10)]
                    found.append((sampler, cfg, len(run[2]), float((run[1] == run[2]).mean()),
                                  self.ref.fd(run[0]), per_class))
        if not found:
            return
        self.out(f"### Model check: plain sampling at {REFERENCE_STEPS} steps")
        self.out()
        self.out("| sampler | CFG | samples | classifier accuracy on the requested class | FD | "
                 "per-class accuracy (T-shirt ... Ankle boot) |")
        self.out("|---|---:|---:|---:|---:|---|")
        for sampler, cfg, n, acc, fd, per_class in found:
            self.out(f"| {LABELS[sampler]} | {cfg:g} | {n} | {100 * acc:.1f}% | {fd:.1f} | "
                     + " ".join(f"{100 * a:.0f}" for a in per_class) + " |")
        self.out()
        self.out("For scale: the classifier scores 91% on the real test images, whose FD to themselves is 0.")
        self.out()
        self.data["model_check"] = [dict(sampler=s, cfg=c, n=n, accuracy=a, fd=f, per_class=pc)
                                    for s, c, n, a, f, pc in found]

    def presets(self, best, rows):
        if not best:
            return
        self.out("### Best rho_bottom per sampler (screen, block 0) and whether it held on fresh seeds")
        self.out()
        confirmed = {(r["sampler"], r["steps"], r["cfg"]): r for r in rows}
        tags = {"better": " (held)", "worse": " (did not hold)", "no significant difference": " (n.s.)"}
        for cfg in sorted({k[2] for k in best}):
            steps_all = sorted({k[1] for k in best if k[2] == cfg})
            self.out(f"CFG {cfg:g}:")
            self.out()
            self.out("| sampler | family | " + " | ".join(f"{s} steps" for s in steps_all) + " |")
            self.out("|---|---|" + "---|" * len(steps_all))
            for sampler in sorted({k[0] for k in best}, key=SAMPLER_ORDER.get):
                cells = []
                for steps in steps_all:
                    entry = best.get((sampler, steps, cfg))
                    r = confirmed.get((sampler, steps, cfg))
                    if entry is None:
                        cells.append("")
                    elif entry[0] == 1.0:
                        cells.append("1.00 (plain best)")
                    else:
                        held = " (screen only)" if r is None or r["rho"] != entry[0] else tags[r["verdict"]]
                        cells.append(f"{entry[0]:.2f}{held}")
                self.out(f"| {LABELS[sampler]} | {FAMILY.get(sampler, '')} | " + " | ".join(cells) + " |")
            self.out()
        self.out("\"held\": the screen's best rho_bottom != 1 beat plain on fresh seeds (where the screen's best "
                 "was plain, the headline table shows the runner-up).")
        self.out()


def equal_quality_steps(plain: dict, target: float):
    """Smallest plain step count reaching ``target`` FD (log-linear interpolation); None if never."""
    points = sorted(plain.items())
    if points[0][1] <= target:
        return ("below", points[0][0])
    for (s0, f0), (s1, f1) in zip(points, points[1:]):
        if f1 <= target:
            if f0 == f1:
                return ("at", float(s1))
            t = (f0 - target) / (f0 - f1)
            return ("at", math.exp(math.log(s0) + t * (math.log(s1) - math.log(s0))))
    return ("above", points[-1][0])


def describe_match(match, steps):
    kind, value = match
    if kind == "below":
        return f"<= {value} (plain at {value} steps is already as good)"
    if kind == "above":
        return f"> {value} (better than plain at {value} steps)"
    return f"~{value:.1f} ({value / steps:.1f}x the steps)"


def plot_curves(curves, matches, path, tuned_curves=None, samples=None):
    """FD vs steps per (sampler, CFG); ``matches`` are the equal-quality rows, whose tuned FD is taken on the
    same seeds as the plain curve."""
    tuned_curves = tuned_curves or {}
    samples = samples or {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    if not curves:
        return False
    # One row per CFG scale, one column per sampler.
    cfgs = sorted({cfg for _, cfg in curves})
    samplers = sorted({sampler for sampler, _ in curves}, key=SAMPLER_ORDER.get)
    fig, axes = plt.subplots(len(cfgs), len(samplers), figsize=(4.2 * len(samplers), 3.6 * len(cfgs)),
                             squeeze=False)
    for i, cfg in enumerate(cfgs):
        for j, sampler in enumerate(samplers):
            if (sampler, cfg) not in curves:
                axes[i][j].set_visible(False)
    for key in sorted(curves):
        sampler, cfg = key
        ax = axes[cfgs.index(cfg)][samplers.index(sampler)]
        plain = sorted(curves[key].items())
        ax.plot([s for s, _ in plain], [f for _, f in plain], "o-", color="0.35", label="plain")
        tuned = sorted((r["steps"], r["fd_tuned"], r["rho"]) for r in matches
                       if r["sampler"] == sampler and r["cfg"] == cfg)
        if key in tuned_curves:
            rho, points = tuned_curves[key]
            line = sorted((s, p["fd_tuned"]) for s, p in points.items())
            ax.plot([s for s, _ in line], [f for _, f in line], "s--", color="tab:red", alpha=0.7,
                    label=f"Skip Tuning, rho {rho:.2f} at every step count")
            tuned = []
        if tuned:
            ax.plot([t[0] for t in tuned], [t[1] for t in tuned], "s", color="tab:red", markersize=7,
                    label="Skip Tuning (best rho)")
            for s, f, rho in tuned:
                ax.annotate(f"rho {rho:.2f}", (s, f), textcoords="offset points", xytext=(6, 4), fontsize=8,
                            color="tab:red")
        ax.set_xscale("log")
        ticks = [s for s, _ in plain]
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())  # log-scale minor labels would overprint the steps
        ax.set_xlabel("steps")
        ax.set_ylabel("FD to test set (lower is better)")
        n = samples.get(key)
        ax.set_title(f"{LABELS[sampler]}, CFG {cfg:g}" + (f" ({n} samples)" if n else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_rho_screen(best, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfgs = sorted({k[2] for k in best})
    samplers = sorted({k[0] for k in best}, key=SAMPLER_ORDER.get)
    steps_all = sorted({k[1] for k in best})
    fig, axes = plt.subplots(len(cfgs), len(steps_all), figsize=(4.6 * len(steps_all), 3.4 * len(cfgs)),
                             squeeze=False)
    legend_axis = None
    for i, cfg in enumerate(cfgs):
        for j, steps in enumerate(steps_all):
            ax = axes[i][j]
            if not any(best.get((sampler, steps, cfg)) for sampler in samplers):
                ax.set_visible(False)  # a preset need not screen every step count at every CFG
                continue
            legend_axis = legend_axis or ax
            for sampler in samplers:
                entry = best.get((sampler, steps, cfg))
                if not entry:
                    continue
                fds = entry[1]
                if 1.0 not in fds:
                    continue
                rhos = sorted(fds)
                # A fixed colour per sampler: panels plot different subsets, and one legend serves them all.
                ax.plot(rhos, [fds[r] - fds[1.0] for r in rhos], "o-", markersize=3, label=LABELS[sampler],
                        color=f"C{SAMPLER_ORDER[sampler]}")
            ax.axhline(0, color="0.5", lw=0.8)
            ax.set_title(f"CFG {cfg:g}, {steps} steps")
            ax.set_xlabel("rho_bottom")
            ax.set_ylabel("FD - FD(plain)")
            ax.grid(alpha=0.3)
    handles = {}
    for ax in axes.flat:
        for line in ax.get_lines():
            if not line.get_label().startswith("_"):
                handles.setdefault(line.get_label(), line)
    legend_axis.legend(handles.values(), handles.keys(), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=MODELS, default="unet", help="names the default store and the outputs")
    parser.add_argument("--store", help="default: quality.py's store of --model")
    parser.add_argument("--backend", default="diffusers")
    parser.add_argument("--docs", help="write <docs>/quality_[<model>_]<backend>[_<tag>].md, PNGs and a JSON "
                                       "summary here")
    parser.add_argument("--tag", help="appended to the output names: a report of a second store beside the first")
    args = parser.parse_args(argv)
    args.store = args.store or default_store(args.model)
    name = args.backend if args.model == "unet" else f"{args.model}_{args.backend}"
    if args.tag:
        name += f"_{args.tag}"

    store = Store(args.store)
    report = Report(store, args.backend)
    report.model_check()
    best = report.screen()
    rows = report.confirm(best)
    report.spread(rows)
    curves, matches = report.curves(rows)
    report.presets(best, rows)
    text = "\n".join(report.lines)
    print(text)
    if args.docs:
        os.makedirs(args.docs, exist_ok=True)
        with open(os.path.join(args.docs, f"quality_{name}.md"), "w", encoding="utf-8") as f:
            source = os.path.relpath(args.store, REPO_ROOT)
            f.write(f"<!-- generated by benchmarks/quality_report.py from {source} -->\n")
            f.write(text + "\n")
        with open(os.path.join(args.docs, f"quality_{name}.json"), "w", encoding="utf-8") as f:
            json.dump(report.data, f, indent=1, default=float)
        if curves:
            plot_curves(curves, matches, os.path.join(args.docs, f"fd_vs_steps_{name}.png"),
                        report.tuned_curves, report.curve_samples)
        if best:
            plot_rho_screen(best, os.path.join(args.docs, f"fd_vs_rho_{name}.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
