"""Tables and plots from the store written by benchmarks/quality.py.

    python3 benchmarks/quality_report.py                       # prints the markdown
    python3 benchmarks/quality_report.py --docs docs/results   # also writes quality.md and PNGs there

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
from _stats import Reference, paired_bootstrap, reference  # noqa: E402
from quality import DEFAULT_STORE, REFERENCE_STEPS  # noqa: E402

LABELS = {
    "euler": "Euler", "heun": "Heun", "dpmpp_2m": "DPM++ 2M", "unipc": "UniPC", "ddim": "DDIM",
    "euler_a": "Euler a", "dpmpp_2m_sde": "DPM++ 2M SDE", "lms": "LMS",
}
FAMILY = {
    "euler": "single-step ODE", "heun": "single-step ODE (2nd order)", "ddim": "single-step ODE",
    "dpmpp_2m": "multistep ODE", "unipc": "multistep ODE", "euler_a": "stochastic (ancestral)",
    "dpmpp_2m_sde": "stochastic (SDE)",
}
KEY = re.compile(r"^(?P<backend>[a-z]+)_(?P<sampler>[a-z0-9_]+)_s(?P<steps>\d+)_cfg(?P<cfg>[\d.]+)"
                 r"_rho(?P<rho>[\d.]+)_b(?P<block>\d+)_n(?P<n>\d+)$")
N_BOOT = 200


class Store:
    def __init__(self, path: str):
        self.path = path
        self.entries = {}
        for file in glob.glob(os.path.join(path, "samples", "*.npz")):
            match = KEY.match(os.path.basename(file)[:-4])
            if not match:
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


def fmt_ci(diffs):
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return lo, hi


def verdict(lo, hi):
    if hi < 0:
        return "better"
    if lo > 0:
        return "worse"
    return "no significant difference"


class Report:
    def __init__(self, store: Store, backend: str):
        self.store = store
        self.backend = backend
        self.ref = Reference(*reference())
        self.lines = []
        self.data = {}  # machine-readable summary
        self.tuned_curves = {}

    def out(self, text=""):
        self.lines.append(text)

    # -- screen: block 0, every rho ------------------------------------------------------------
    def screen(self):
        b = self.backend
        keys = [k for k in self.store.entries if k[0] == b and k[5] == 0]
        groups = sorted({(k[1], k[3], k[2]) for k in keys}, key=lambda g: (g[1], list(LABELS).index(g[0]), g[2]))
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
                        lo, hi = fmt_ci(diffs)
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
        order = sorted(best.items(), key=lambda kv: (kv[0][2], list(LABELS).index(kv[0][0]), kv[0][1]))
        for (sampler, steps, cfg), (_, fds, _) in order:
            blocks = [x for x in self.store.blocks(b, sampler, steps, cfg, 1.0) if x != 0]
            # The screen's best among the rhos measured again on fresh seeds (probes past the grid's
            # ends are screened only).
            confirmed = [r for r in fds
                         if r != 1.0 and set(blocks) <= set(self.store.blocks(b, sampler, steps, cfg, r))]
            if not blocks or not confirmed:
                continue
            rho = min(confirmed, key=fds.get)
            plain = self.store.get(b, sampler, steps, cfg, 1.0, blocks)
            tuned = self.store.get(b, sampler, steps, cfg, rho, blocks)
            if plain is None or tuned is None:
                continue
            fd_p, fd_t, diffs = paired_bootstrap(self.ref, plain[0], tuned[0], n_boot=N_BOOT)
            lo, hi = fmt_ci(diffs)
            acc_p = float((plain[1] == plain[2]).mean())
            acc_t = float((tuned[1] == tuned[2]).mean())
            block_fds = [self.ref.fd(self.store.get(b, sampler, steps, cfg, 1.0, [x])[0]) for x in blocks]
            rows.append(dict(sampler=sampler, steps=steps, cfg=cfg, rho=rho, n=len(plain[2]), fd_plain=fd_p,
                             fd_tuned=fd_t, lo=lo, hi=hi, acc_plain=acc_p, acc_tuned=acc_t,
                             block_fds=block_fds, verdict=verdict(lo, hi)))
        if not rows:
            return rows
        self.out(f"### Headline: plain vs the screened best rho_bottom on fresh seeds ({rows[0]['n']} samples each)")
        self.out()
        self.out("The best rho_bottom != 1 of the screen (seed block 0) among those also run on other seed blocks, "
                 "measured again there, on seeds it was not chosen on. Delta FD = tuned - plain with its 95% "
                 "paired-bootstrap interval; verdict \"better\"/\"worse\" only where that interval excludes 0.")
        self.out()
        self.out("| CFG | sampler | steps | FD plain | best rho | FD tuned | delta FD (95% CI) "
                 "| accuracy plain -> tuned | verdict |")
        self.out("|---:|---|---:|---:|---:|---:|---|---|---|")
        for r in rows:
            name = LABELS.get(r["sampler"], r["sampler"])
            delta = f"{r['fd_tuned'] - r['fd_plain']:+.1f} ({r['lo']:+.1f} to {r['hi']:+.1f})"
            accuracy = f"{100 * r['acc_plain']:.1f}% -> {100 * r['acc_tuned']:.1f}%"
            self.out(f"| {r['cfg']:g} | {name} | {r['steps']} | {r['fd_plain']:.1f} | {r['rho']:.2f} | "
                     f"{r['fd_tuned']:.1f} | {delta} | {accuracy} | {r['verdict']} |")
        self.out()
        self.data["headline"] = rows
        return rows

    def spread(self, rows):
        if not rows:
            return
        sds = [float(np.std(r["block_fds"], ddof=1)) for r in rows if len(r["block_fds"]) > 1]
        widths = [(r["hi"] - r["lo"]) / 2 for r in rows]
        n_block = self._n(1)
        boot_sd = []
        for r in rows[:6]:
            run = self.store.get(self.backend, r["sampler"], r["steps"], r["cfg"], 1.0,
                                 [x for x in self.store.blocks(self.backend, r["sampler"], r["steps"], r["cfg"], 1.0)
                                  if x != 0])
            rng = np.random.default_rng(1)
            f = run[0]
            boot_sd.append(float(np.std([self.ref.fd(f[rng.integers(0, len(f), len(f))]) for _ in range(100)])))
        self.out("### Seed-to-seed spread")
        self.out()
        if sds:
            self.out(f"- The same configuration on disjoint seed sets of {n_block}: FD standard deviation "
                     f"{np.median(sds):.2f} (median over {len(sds)} configurations; "
                     f"range {min(sds):.2f}-{max(sds):.2f}).")
        if boot_sd:
            self.out(f"- Bootstrap standard deviation of one FD at {rows[0]['n']} samples: "
                     f"about {np.median(boot_sd):.2f}.")
        if widths:
            self.out(f"- Paired differences are much tighter: the 95% interval of tuned - plain is +/- "
                     f"{np.median(widths):.2f} (median half-width), because both use the same seeds.")
        self.out("- Small-sample FD is biased upward (by roughly the same amount for every configuration at the "
                 "same n), so compare FDs only at equal n; the tables do.")
        self.out()
        self.data["spread"] = {"block_sd_median": float(np.median(sds)) if sds else None,
                               "bootstrap_sd_median": float(np.median(boot_sd)) if boot_sd else None,
                               "paired_ci_halfwidth_median": float(np.median(widths)) if widths else None}

    # -- step curves and equal quality ------------------------------------------------------------
    def curves(self, rows):
        b = self.backend
        confirm_blocks = sorted({x for k in self.store.entries if k[0] == b for x in [k[5]] if x != 0})
        curves = {}
        for sampler in self.store.values("sampler"):
            for cfg in self.store.values("cfg"):
                plain = {}
                for steps in self.store.values("steps"):
                    blocks = [x for x in self.store.blocks(b, sampler, steps, cfg, 1.0) if x != 0]
                    if not blocks or blocks != confirm_blocks:
                        continue
                    run = self.store.get(b, sampler, steps, cfg, 1.0, blocks)
                    plain[steps] = self.ref.fd(run[0])
                if len(plain) >= 4:
                    curves[(sampler, cfg)] = plain
        tuned_curves = {}
        for (sampler, cfg), plain in sorted(curves.items()):
            rho = next((r["rho"] for r in rows if (r["sampler"], r["cfg"], r["steps"]) == (sampler, cfg, 10)), None)
            if rho is None:
                continue
            points = {}
            for steps in sorted(plain):
                if not set(confirm_blocks) <= set(self.store.blocks(b, sampler, steps, cfg, rho)):
                    continue
                base = self.store.get(b, sampler, steps, cfg, 1.0, confirm_blocks)
                run = self.store.get(b, sampler, steps, cfg, rho, confirm_blocks)
                fd_p, fd_t, diffs = paired_bootstrap(self.ref, base[0], run[0], n_boot=N_BOOT)
                lo, hi = fmt_ci(diffs)
                points[steps] = dict(fd_plain=fd_p, fd_tuned=fd_t, lo=lo, hi=hi,
                                     acc_plain=float((base[1] == base[2]).mean()),
                                     acc_tuned=float((run[1] == run[2]).mean()))
            if len(points) >= 3:
                tuned_curves[(sampler, cfg)] = (rho, points)
        for (sampler, cfg), (rho, points) in tuned_curves.items():
            self.out(f"### FD vs steps, {LABELS[sampler]}, CFG {cfg:g}: plain vs rho_bottom {rho:.2f} "
                     f"(the best at 10 steps), {len(confirm_blocks) * self._n(1)} samples, paired")
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
        results = []
        for (sampler, cfg), plain in sorted(curves.items()):
            # Every confirmed row, not only the wins: "plain needs fewer steps" is the answer too.
            for r in rows:
                if r["sampler"] == sampler and r["cfg"] == cfg:
                    results.append(dict(sampler=sampler, cfg=cfg, steps=r["steps"], rho=r["rho"],
                                        fd_tuned=r["fd_tuned"], verdict=r["verdict"],
                                        match=equal_quality_steps(plain, r["fd_tuned"])))
        if results:
            self.out("### Equal quality: plain steps needed to match Skip-Tuned sampling")
            self.out()
            self.out("Plain FD is interpolated linearly in log(steps) between measured step counts "
                     f"(4, 6, 8, 10, 15, 25, {REFERENCE_STEPS}). A Skip-Tuned setting that did not beat plain "
                     "needs about its own step count or fewer: no saving.")
            self.out()
            self.out("| CFG | sampler | Skip-Tuned steps (rho) | its FD | vs plain, same steps "
                     "| plain steps for the same FD | plain FD at 50 steps |")
            self.out("|---:|---|---|---:|---|---|---:|")
            for r in results:
                ref = curves[(r["sampler"], r["cfg"])].get(REFERENCE_STEPS)
                ref_text = "" if ref is None else f"{ref:.1f}"
                self.out(f"| {r['cfg']:g} | {LABELS[r['sampler']]} | {r['steps']} ({r['rho']:.2f}) | "
                         f"{r['fd_tuned']:.1f} | {r['verdict']} | {describe_match(r['match'], r['steps'])} "
                         f"| {ref_text} |")
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
        cfgs = sorted({k[2] for k in best})
        steps_all = sorted({k[1] for k in best})
        header = " | ".join(f"CFG {c:g}, {s} steps" for c in cfgs for s in steps_all)
        self.out(f"| sampler | family | {header} |")
        self.out("|---|---|" + "---|" * (len(cfgs) * len(steps_all)))
        confirmed = {(r["sampler"], r["steps"], r["cfg"]): r for r in rows}
        for sampler in sorted({k[0] for k in best}, key=lambda s: list(LABELS).index(s)):
            cells = []
            for cfg in cfgs:
                for steps in steps_all:
                    entry = best.get((sampler, steps, cfg))
                    if entry is None:
                        cells.append("")
                        continue
                    rho = entry[0]
                    r = confirmed.get((sampler, steps, cfg))
                    if rho == 1.0:
                        tag = " (plain best)"
                    elif r is None:
                        tag = ""
                    else:
                        tag = {"better": " (held)", "worse": " (did not hold)",
                               "no significant difference": " (n.s. on fresh seeds)"}[r["verdict"]]
                    cells.append(f"{rho:.2f}{tag}")
            self.out(f"| {LABELS[sampler]} | {FAMILY.get(sampler, '')} | " + " | ".join(cells) + " |")
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


def plot_curves(curves, rows, path, tuned_curves=None):
    tuned_curves = tuned_curves or {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    keys = sorted(curves)
    if not keys:
        return False
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        sampler, cfg = key
        plain = sorted(curves[key].items())
        ax.plot([s for s, _ in plain], [f for _, f in plain], "o-", color="0.35", label="plain")
        tuned = sorted((r["steps"], r["fd_tuned"], r["rho"]) for r in rows
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
        ax.set_title(f"{LABELS[sampler]}, CFG {cfg:g}")
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
    samplers = sorted({k[0] for k in best}, key=lambda s: list(LABELS).index(s))
    steps_all = sorted({k[1] for k in best})
    fig, axes = plt.subplots(len(cfgs), len(steps_all), figsize=(4.6 * len(steps_all), 3.4 * len(cfgs)),
                             squeeze=False)
    legend_axis = None
    for i, cfg in enumerate(cfgs):
        for j, steps in enumerate(steps_all):
            ax = axes[i][j]
            if not any(best.get((sampler, steps, cfg)) for sampler in samplers):
                ax.set_visible(False)  # e.g. the 4- and 15-step screens ran at CFG 4 only
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
                ax.plot(rhos, [fds[r] - fds[1.0] for r in rhos], "o-", markersize=3, label=LABELS[sampler])
            ax.axhline(0, color="0.5", lw=0.8)
            ax.set_title(f"CFG {cfg:g}, {steps} steps")
            ax.set_xlabel("rho_bottom")
            ax.set_ylabel("FD - FD(plain)")
            ax.grid(alpha=0.3)
    legend_axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default=DEFAULT_STORE)
    parser.add_argument("--backend", default="diffusers")
    parser.add_argument("--docs", help="write <docs>/quality_<backend>.md, PNGs and a JSON summary here")
    args = parser.parse_args(argv)

    store = Store(args.store)
    report = Report(store, args.backend)
    report.model_check()
    best = report.screen()
    rows = report.confirm(best)
    report.spread(rows)
    curves, _ = report.curves(rows)
    report.presets(best, rows)
    text = "\n".join(report.lines)
    print(text)
    if args.docs:
        os.makedirs(args.docs, exist_ok=True)
        with open(os.path.join(args.docs, f"quality_{args.backend}.md"), "w", encoding="utf-8") as f:
            source = os.path.relpath(args.store, REPO_ROOT)
            f.write(f"<!-- generated by benchmarks/quality_report.py from {source} -->\n")
            f.write(text + "\n")
        with open(os.path.join(args.docs, f"quality_{args.backend}.json"), "w", encoding="utf-8") as f:
            json.dump(report.data, f, indent=1, default=float)
        if curves:
            plot_curves(curves, rows, os.path.join(args.docs, f"fd_vs_steps_{args.backend}.png"),
                        report.tuned_curves)
        if best:
            plot_rho_screen(best, os.path.join(args.docs, f"fd_vs_rho_{args.backend}.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
