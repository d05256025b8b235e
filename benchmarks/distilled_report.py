"""Skip Tuning on a few-step distilled model, and next to distillation: tables and a plot.

Reads the stores of ``quality.py --model lcm_unet --preset distilled`` (the LCM student) and
``quality.py --model unet --preset distilled_base`` (the base U-Net), both sampled through ComfyUI's
KSampler path on the same seed blocks, so every comparison below is paired:

    python3 benchmarks/distilled_report.py                        # prints the markdown
    python3 benchmarks/distilled_report.py --docs docs/results    # writes distilled.md, .json and .png

* the student's rho screen (block 0) and, per cell, plain vs the screen's best rho on 500 fresh seeds;
* the base at the same evaluation counts, likewise;
* side by side at 2, 4 and 8 evaluations per image: the base plain (its best sampler), the base with its
  best Skip Tuning setting, the student plain (its best CFG), the student with its best setting, and how
  many plain base steps (DPM++ 2M, CFG 4) reach the same FD.

A "best" is always chosen on block 0 and reported on blocks 1-2, so the choice does not flatter it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # many small eigensolves (see quality_report.py)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import REPO_ROOT  # noqa: E402
from _stats import Reference, paired_bootstrap, paired_interval, paired_verdict, reference  # noqa: E402
from quality import DISTILLED_RHOS, PRESETS, default_store, nfe  # noqa: E402
from quality_report import LABELS, Store, describe_match, equal_quality_steps  # noqa: E402

BACKEND = "comfy"
SCREEN = [0]
FRESH = [1, 2]
EVALUATIONS = (2, 4, 8)
CURVE_CFG = 4.0  # the base's plain step curve for the equal-quality column: its best sampler at each step count


def unet_passes(sampler: str, steps: int, cfg: float) -> int:
    """U-Net passes per image: each evaluation runs cond and uncond (one batch of two) when CFG != 1."""
    return nfe(sampler, steps) * (2 if cfg != 1.0 else 1)


class Side:
    """One model's store: the FD of a configuration on given blocks, the screen's best rho, paired deltas."""

    def __init__(self, store: Store, ref: Reference):
        self.store = store
        self.ref = ref

    def fd(self, sampler, steps, cfg, rho, blocks):
        run = self.store.get(BACKEND, sampler, steps, cfg, rho, blocks)
        return None if run is None else self.ref.fd(run[0])

    def accuracy(self, sampler, steps, cfg, rho, blocks):
        run = self.store.get(BACKEND, sampler, steps, cfg, rho, blocks)
        return None if run is None else float((run[1] == run[2]).mean())

    def screen(self, sampler, steps, cfg, rhos):
        return {rho: fd for rho in rhos if (fd := self.fd(sampler, steps, cfg, rho, SCREEN)) is not None}

    def best_rho(self, sampler, steps, cfg, rhos):
        """The screen's best rho other than 1 (confirmed against plain even where plain screened better)."""
        fds = {rho: fd for rho, fd in self.screen(sampler, steps, cfg, rhos).items() if rho != 1.0}
        return min(fds, key=fds.get) if fds else None

    def paired(self, sampler, steps, cfg, rho, blocks=FRESH):
        plain = self.store.get(BACKEND, sampler, steps, cfg, 1.0, blocks)
        tuned = self.store.get(BACKEND, sampler, steps, cfg, rho, blocks)
        if plain is None or tuned is None:
            return None
        fd_plain, fd_tuned, diffs = paired_bootstrap(self.ref, plain[0], tuned[0], n_boot=200)
        lo, hi = paired_interval(diffs)
        return dict(sampler=sampler, steps=steps, cfg=cfg, rho=rho, n=len(plain[0]), fd_plain=fd_plain,
                    fd_tuned=fd_tuned, lo=lo, hi=hi, verdict=paired_verdict(lo, hi),
                    acc_plain=float((plain[1] == plain[2]).mean()), acc_tuned=float((tuned[1] == tuned[2]).mean()))


def cells(preset: str):
    """(sampler, steps, cfg) of a preset's screen stages, in order."""
    for stage in PRESETS[preset]["stages"]:
        if stage["blocks"] == SCREEN and len(stage["rhos"]) > 1:
            for sampler in stage["samplers"]:
                for steps in stage["steps"]:
                    for cfg in stage["cfgs"]:
                        yield sampler, steps, cfg


def screen_table(side: Side, preset: str, rhos) -> list[str]:
    lines = ["| sampler | steps | CFG | " + " | ".join(f"{r:.2f}" for r in rhos) + " |",
             "|---|---:|---:|" + "---:|" * len(rhos)]
    for sampler, steps, cfg in cells(preset):
        fds = side.screen(sampler, steps, cfg, rhos)
        if not fds:
            continue
        best = min(fds, key=fds.get)
        texts = [("" if r not in fds else f"**{fds[r]:.1f}**" if r == best else f"{fds[r]:.1f}") for r in rhos]
        lines.append(f"| {LABELS[sampler]} | {steps} | {cfg:g} | " + " | ".join(texts) + " |")
    return lines


def confirm_rows(side: Side, preset: str, rhos) -> list[dict]:
    rows = []
    for sampler, steps, cfg in cells(preset):
        rho = side.best_rho(sampler, steps, cfg, rhos)
        row = None if rho is None else side.paired(sampler, steps, cfg, rho)
        if row is not None:
            rows.append(row)
    return rows


def confirm_table(rows) -> list[str]:
    lines = ["| sampler | steps | CFG | U-Net passes | samples | FD plain | best rho (screen) | FD tuned | "
             "delta FD (95% CI) | accuracy plain -> tuned | verdict |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for r in rows:
        passes = unet_passes(r["sampler"], r["steps"], r["cfg"])
        lines.append(
            f"| {LABELS[r['sampler']]} | {r['steps']} | {r['cfg']:g} | {passes}"
            f" | {r['n']} | {r['fd_plain']:.1f} | {r['rho']:.2f} | {r['fd_tuned']:.1f} | "
            f"{r['fd_tuned'] - r['fd_plain']:+.1f} ({r['lo']:+.1f} to {r['hi']:+.1f}) | "
            f"{100 * r['acc_plain']:.1f}% -> {100 * r['acc_tuned']:.1f}% | {r['verdict']} |")
    return lines


def choose(side: Side, candidates, rhos):
    """Among (sampler, steps, cfg) candidates, the plain one and the tuned one with the lowest screen FD;
    the tuned choice is kept only where its fresh-seed confirmation beat plain ("off" otherwise)."""
    plain = [(fd, c) for c in candidates if (fd := side.fd(*c, 1.0, SCREEN)) is not None]
    if not plain:
        return None, None
    best_plain = min(plain)[1]
    tuned = []
    for c in candidates:
        rho = side.best_rho(*c, rhos)
        fd = None if rho is None else side.fd(*c, rho, SCREEN)
        if fd is not None:
            tuned.append((fd, c, rho))
    best_tuned = None
    if tuned:
        _, c, rho = min(tuned)
        confirmation = side.paired(*c, rho)
        if confirmation is not None:
            best_tuned = (c, rho, confirmation)
    return best_plain, best_tuned


def side_by_side(base: Side, student: Side):
    """Rows at 2, 4 and 8 evaluations: (label, sampler, steps, cfg, rho, FD on fresh seeds, accuracy)."""
    base_rhos = PRESETS["distilled_base"]["stages"][0]["rhos"]
    curve = {}
    for steps in base.store.values("steps"):
        fds = [fd for sampler in base.store.values("sampler")
               if (fd := base.fd(sampler, steps, CURVE_CFG, 1.0, FRESH)) is not None]
        if fds:
            curve[steps] = min(fds)
    rows = []
    for evaluations in EVALUATIONS:
        base_cells = [(s, evaluations, c) for s, n, c in cells("distilled_base") if n == evaluations]
        student_cells = [(s, n, c) for s, n, c in cells("distilled") if nfe(s, n) == evaluations]
        for name, side, candidates, rhos in (("base", base, base_cells, base_rhos),
                                             ("student (LCM)", student, student_cells, DISTILLED_RHOS)):
            best_plain, best_tuned = choose(side, candidates, rhos)
            if best_plain is None:
                continue
            entries = [(f"{name}, plain", best_plain, 1.0, None)]
            if best_tuned is not None:
                c, rho, confirmation = best_tuned
                if confirmation["verdict"] == "better":
                    entries.append((f"{name}, Skip Tuning", c, rho, confirmation))
                else:  # off: the best plain setting is the best there is
                    entries.append((f"{name}, Skip Tuning", best_plain, 1.0, confirmation))
            for label, (sampler, steps, cfg), rho, confirmation in entries:
                fd = side.fd(sampler, steps, cfg, rho, FRESH)
                if fd is None:
                    continue
                match = equal_quality_steps(curve, fd) if curve else None
                rows.append(dict(evaluations=evaluations, label=label, sampler=sampler, steps=steps, cfg=cfg,
                                 rho=rho, fd=fd, accuracy=side.accuracy(sampler, steps, cfg, rho, FRESH),
                                 passes=unet_passes(sampler, steps, cfg), n=len(FRESH) * 250,
                                 equal_quality=None if match is None else describe_match(match, steps),
                                 screened_rho=None if confirmation is None else confirmation["rho"],
                                 confirmation=confirmation))
    return rows, curve


def side_by_side_table(rows) -> list[str]:
    lines = ["| evaluations | model, setting | sampler | steps | CFG | rho_bottom | U-Net passes | FD | accuracy | "
             "plain base steps (CFG 4) for the same FD |",
             "|---:|---|---|---:|---:|---|---:|---:|---:|---|"]
    for r in rows:
        rho = f"{r['rho']:.2f}"
        if r["confirmation"] is not None and r["rho"] == 1.0:
            c = r["confirmation"]
            rho = (f"off (best screened: {LABELS[c['sampler']]} {c['steps']} steps, CFG {c['cfg']:g}, rho "
                   f"{c['rho']:.2f}: {c['fd_tuned'] - c['fd_plain']:+.1f}, {c['lo']:+.1f} to {c['hi']:+.1f}, "
                   f"{c['verdict']})")
        lines.append(f"| {r['evaluations']} | {r['label']} | {LABELS[r['sampler']]} | {r['steps']} | {r['cfg']:g} | "
                     f"{rho} | {r['passes']} | {r['fd']:.1f} | {100 * r['accuracy']:.1f}% | "
                     f"{r['equal_quality'] or 'n/a'} |")
    return lines


def plot(rows, student: Side, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    styles = {"base, plain": ("o-", "0.35"), "base, Skip Tuning": ("s--", "tab:blue"),
              "student (LCM), plain": ("o-", "tab:green"), "student (LCM), Skip Tuning": ("s--", "tab:red")}
    for label, (marker, color) in styles.items():
        points = sorted((r["evaluations"], r["fd"]) for r in rows if r["label"] == label)
        if points:
            left.plot([e for e, _ in points], [f for _, f in points], marker, color=color, label=label)
    left.set_xscale("log", base=2)
    left.set_xticks(EVALUATIONS)
    left.set_xticklabels([str(e) for e in EVALUATIONS])
    left.set_xlabel("network evaluations per image")
    left.set_ylabel("FD to test set (lower is better)")
    left.set_title("Each model's best plain and best Skip-Tuned setting (500 fresh seeds)")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    for k, (steps, cfg) in enumerate((s, c) for s in (1, 2, 4, 8) for c in (1.0, 1.5)):
        fds = student.screen("lcm", steps, cfg, DISTILLED_RHOS)
        if 1.0 in fds:
            rhos = sorted(fds)
            right.plot(rhos, [fds[r] - fds[1.0] for r in rhos], "o-" if cfg == 1.0 else "^:", markersize=3,
                       color=f"C{k // 2}", label=f"LCM {steps} step{'s' if steps > 1 else ''}, CFG {cfg:g}")
    right.axhline(0, color="0.5", lw=0.8)
    right.set_xlabel("rho_bottom")
    right.set_ylabel("FD - FD(plain)")
    right.set_title("The student's rho screen (250 seeds)")
    right.grid(alpha=0.3)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student-store", default=default_store("lcm_unet"))
    parser.add_argument("--base-store", default=default_store("unet"))
    parser.add_argument("--docs", help="write distilled.md, distilled.json and distilled.png here")
    args = parser.parse_args(argv)
    ref = Reference(*reference())
    student = Side(Store(os.path.join(REPO_ROOT, args.student_store)), ref)
    base = Side(Store(os.path.join(REPO_ROOT, args.base_store)), ref)
    base_rhos = PRESETS["distilled_base"]["stages"][0]["rhos"]

    student_rows = confirm_rows(student, "distilled", DISTILLED_RHOS)
    base_rows = confirm_rows(base, "distilled_base", base_rhos)
    rows, curve = side_by_side(base, student)
    lines = ["### The LCM student: FD by rho_bottom (screen, seed block 0, 250 samples per cell, paired)", "",
             "Lower is better; **bold**: the row's best.", "",
             *screen_table(student, "distilled", DISTILLED_RHOS), "",
             "### The student: plain vs the screen's best rho on 500 fresh paired seeds", "",
             *confirm_table(student_rows), "",
             "### The base U-Net at the same evaluation counts (CFG 4): screen", "",
             *screen_table(base, "distilled_base", base_rhos), "",
             "### The base: plain vs the screen's best rho on 500 fresh paired seeds", "",
             *confirm_table(base_rows), "",
             "### Side by side at 2, 4 and 8 evaluations (500 fresh seeds, the same for every row)", "",
             "Each model's best plain setting and best Skip-Tuned setting at that many sequential network "
             "evaluations, chosen on the screen; a tuned setting that did not beat plain on the fresh seeds is "
             "shown as off (the plain setting, with what the best screened one did). U-Net passes count the uncond "
             "half of CFG. The last column interpolates in log(steps) the base's plain FD at CFG 4 with its best "
             "sampler at each step count (" + ", ".join(f"{s}: {fd:.1f}" for s, fd in sorted(curve.items()))
             + "; DPM++ 2M alone beyond 8 steps).", "",
             *side_by_side_table(rows)]
    text = "\n".join(lines)
    print(text)
    if args.docs:
        os.makedirs(args.docs, exist_ok=True)
        with open(os.path.join(args.docs, "distilled.md"), "w", encoding="utf-8") as f:
            f.write("<!-- generated by benchmarks/distilled_report.py -->\n" + text + "\n")
        with open(os.path.join(args.docs, "distilled.json"), "w", encoding="utf-8") as f:
            json.dump({"student": student_rows, "base": base_rows, "side_by_side": rows,
                       "base_curve": {str(k): v for k, v in curve.items()}}, f, indent=1, default=float)
        plot(rows, student, os.path.join(args.docs, "distilled.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
