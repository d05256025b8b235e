"""Skip Tuning across schedulers and optimized step schedules: tables and plots from ``--preset schedulers``.

    python3 benchmarks/quality.py --preset schedulers --threads 1      # resumable; tier by tier, see quality.py
    python3 benchmarks/schedulers_report.py --docs docs/results        # schedulers.md, .json, PNGs

Every cell (model, scheduler, sampler, steps, CFG) is a rho_bottom screen on seed block 0 and plain vs the
screen's best rho_bottom != 1 on fresh block 1: delta FD with its 95% paired-bootstrap interval. All schedulers
share the seeds (labels, initial noise, per-step noise), so comparisons across schedulers are paired as well.
Choices (best rho, best scheduler, best Skip-Tuned setting) are made on block 0 and measured on block 1. Cells
whose confirmation has not run yet are listed as pending and enter no claim.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import REPO_ROOT  # noqa: E402
from _stats import Reference, paired_bootstrap, paired_interval, paired_verdict, reference  # noqa: E402
from quality import COMPARED_SCHEDULERS, DEFAULT_SCHEDULER, PRESETS, TABLE_SAMPLERS, default_store  # noqa: E402
from quality_report import KEY, LABELS, N_BOOT, SAMPLER_ORDER, Store, describe_match, equal_quality_steps  # noqa: E402

SCHEDULER_LABELS = {"normal": "normal", "karras": "karras", "exponential": "exponential",
                    "sgm_uniform": "sgm_uniform", "beta": "beta", "kl_optimal": "kl_optimal",
                    "ays": "AlignYourSteps (SD1)", "gits": "GITS (1.20)"}
SCHEDULER_ORDER = list(SCHEDULER_LABELS)
MODEL_NAMES = {"unet": "U-Net (bundled)", "wide_unet": "wide U-Net", "uvit": "U-ViT"}
SCREEN, FRESH = 0, 1
# A row of the presets table: the cell it is measured on, its rho_bottom range ("start with" to "then try").
TABLE_ROWS = [
    ("ODE multistep (DPM++ 2M), no guidance, 4 steps", "dpmpp_2m", 4, 1.0, (0.6, 0.8)),
    ("ODE multistep (DPM++ 2M), no guidance, 6-8 steps", "dpmpp_2m", 6, 1.0, (0.7, 0.9)),
    ("Euler, no guidance, 4 steps", "euler", 4, 1.0, (0.7, 0.9)),
    ("stochastic (Euler a), no guidance, 4 steps", "euler_a", 4, 1.0, (0.6, 0.9)),
    ("CFG 4, 4 steps: Euler", "euler", 4, 4.0, (1.0, 1.0)),
    ("CFG 4, 4 steps: DPM++ 2M", "dpmpp_2m", 4, 4.0, (1.0, 1.0)),
    ("CFG 4, 4 steps: Euler a", "euler_a", 4, 4.0, (1.0, 1.0)),
    ("CFG 4, 6-25 steps: Euler", "euler", 6, 4.0, (1.0, 1.0)),
    ("CFG 4, 6-25 steps: DPM++ 2M", "dpmpp_2m", 6, 4.0, (1.0, 1.0)),
    ("CFG 4, 6-25 steps: Euler a", "euler_a", 6, 4.0, (1.0, 1.0)),
]


def schedulers_in(path: str) -> list:
    found = set()
    for file in os.listdir(os.path.join(path, "samples")) if os.path.isdir(os.path.join(path, "samples")) else []:
        match = KEY.match(file[:-4]) if file.endswith(".npz") else None
        if match:
            found.add(match["scheduler"] or DEFAULT_SCHEDULER)
    return sorted(found, key=lambda s: SCHEDULER_ORDER.index(s) if s in SCHEDULER_ORDER else len(SCHEDULER_ORDER))


def screened_cells(preset: dict, model: str):
    """(tier, scheduler, sampler, steps, cfg) of every screen the preset runs on ``model``."""
    for stage in preset["stages"]:
        if stage["blocks"] != [SCREEN] or model not in stage.get("models", preset.get("models", ["unet"])):
            continue
        for scheduler in stage.get("schedulers", [DEFAULT_SCHEDULER]):
            for sampler in stage["samplers"]:
                for steps in stage["steps"]:
                    for cfg in stage["cfgs"]:
                        yield stage.get("tier", 0), scheduler, sampler, steps, float(cfg)


def planned_schedules(preset: dict, model: str) -> dict:
    """(sampler, steps, cfg) -> the schedules the preset screens there on ``model`` in the first tier that has the
    cell: a comparison across schedules waits for those, and takes in the later tiers' as they come."""
    planned, first_tier = {}, {}
    for tier, scheduler, *cell in screened_cells(preset, model):
        if first_tier.setdefault(tuple(cell), tier) == tier:
            planned.setdefault(tuple(cell), set()).add(scheduler)
    return planned


def grid_cells(preset: dict, model: str) -> set:
    """(scheduler, sampler, steps, cfg) of every cell the preset screens on ``model``, in any tier."""
    return {tuple(cell) for _, *cell in screened_cells(preset, model)}


class ModelResults:
    """One model's store, read scheduler by scheduler; ``planned`` (see planned_schedules) says which schedules a
    cell waits for before it is compared across schedules (default: those screened there)."""

    def __init__(self, path: str, ref: Reference, backend: str = "comfy", planned: dict | None = None):
        self.ref = ref
        self.backend = backend
        self.stores = {s: Store(path, s) for s in schedulers_in(path)}
        self.planned = planned or {}
        self._fd = {}

    def samples(self, scheduler, sampler, steps, cfg, rho, block):
        store = self.stores.get(scheduler)
        return None if store is None else store.get(self.backend, sampler, steps, cfg, rho, [block])

    def fd(self, scheduler, sampler, steps, cfg, rho, block):
        key = (scheduler, sampler, steps, float(cfg), float(rho), block)
        if key not in self._fd:
            run = self.samples(*key)
            self._fd[key] = None if run is None else self.ref.fd(run[0])
        return self._fd[key]

    def cells(self):
        """(sampler, steps, cfg) with a screen on any scheduler."""
        found = set()
        for store in self.stores.values():
            found |= {(k[1], k[2], k[3]) for k in store.entries if k[0] == self.backend and k[5] == SCREEN}
        return sorted(found, key=lambda c: (c[2], c[1], SAMPLER_ORDER.get(c[0], 99)))

    def screen(self, scheduler, sampler, steps, cfg) -> dict:
        store = self.stores.get(scheduler)
        if store is None:
            return {}
        rhos = sorted({k[4] for k in store.entries if k[:4] == (self.backend, sampler, steps, float(cfg))
                       and k[5] == SCREEN})
        return {rho: self.fd(scheduler, sampler, steps, cfg, rho, SCREEN) for rho in rhos}

    def confirmed(self, scheduler, sampler, steps, cfg):
        """Plain vs the screen's best rho_bottom != 1 on the fresh block; None while pending."""
        fds = self.screen(scheduler, sampler, steps, cfg)
        tuned = {r: f for r, f in fds.items() if r != 1.0}
        if 1.0 not in fds or not tuned:
            return None
        rho = min(tuned, key=tuned.get)
        plain = self.samples(scheduler, sampler, steps, cfg, 1.0, FRESH)
        run = self.samples(scheduler, sampler, steps, cfg, rho, FRESH)
        if plain is None or run is None:
            return None
        fd_p, fd_t, diffs = paired_bootstrap(self.ref, plain[0], run[0], n_boot=N_BOOT)
        lo, hi = paired_interval(diffs)
        return dict(scheduler=scheduler, sampler=sampler, steps=steps, cfg=cfg, rho=rho, n=len(plain[2]),
                    screen_best=min(fds, key=fds.get), fd_plain=fd_p, fd_tuned=fd_t, lo=lo, hi=hi,
                    verdict=paired_verdict(lo, hi))

    def paired(self, a, b):
        """Delta FD (b - a) with its interval between two settings (scheduler, sampler, steps, cfg, rho) on the
        fresh block."""
        first, second = self.samples(*a, FRESH), self.samples(*b, FRESH)
        if first is None or second is None:
            return None
        fd_a, fd_b, diffs = paired_bootstrap(self.ref, first[0], second[0], n_boot=N_BOOT)
        lo, hi = paired_interval(diffs)
        return dict(fd_a=fd_a, fd_b=fd_b, lo=lo, hi=hi, verdict=paired_verdict(lo, hi))

    def plain_curve(self, scheduler, sampler, cfg) -> dict:
        store = self.stores.get(scheduler)
        if store is None:
            return {}
        steps = sorted({k[2] for k in store.entries if k[0] == self.backend and k[1] == sampler
                        and k[3] == float(cfg) and k[4] == 1.0 and k[5] == FRESH})
        return {n: self.fd(scheduler, sampler, n, cfg, 1.0, FRESH) for n in steps}


def progress(preset: dict, stores: dict) -> dict:
    """Per tier: cells of the preset confirmed (both fresh-block files present) and cells in all; a stage of plain
    runs counts its jobs."""
    from quality import config_key, plan

    done, total = {}, {}
    n = preset["block_size"]
    for index, stage in enumerate(preset["stages"]):
        tier = stage.get("tier", 0)
        for model in stage.get("models", preset.get("models", ["unet"])):
            path = stores.get(model)
            if stage["rhos"] != "best" and stage["blocks"] != [FRESH]:
                continue  # a screen: its cell is counted by its confirmation
            jobs = plan(preset, path or "/nonexistent", "comfy", index)
            if stage["rhos"] == "best":
                jobs = [j for j in jobs if j.rho == 1.0]  # one per cell; the tuned side is checked below
            for job in jobs:
                total[tier] = total.get(tier, 0) + 1
                if path is None:
                    continue
                sample = os.path.join(path, "samples", "{}.npz")
                keys = [config_key("comfy", job.sampler, job.steps, job.cfg, job.rho, job.block, n, job.scheduler)]
                if stage["rhos"] == "best":
                    tuned = plan(preset, path, "comfy", index)
                    keys += [config_key("comfy", j.sampler, j.steps, j.cfg, j.rho, j.block, n, j.scheduler)
                             for j in tuned if j.rho != 1.0 and (j.sampler, j.steps, j.cfg, j.scheduler)
                             == (job.sampler, job.steps, job.cfg, job.scheduler)] or ["missing"]
                if all(os.path.exists(sample.format(key)) for key in keys):
                    done[tier] = done.get(tier, 0) + 1
    return {tier: (done.get(tier, 0), total[tier]) for tier in sorted(total)}


def delta_text(r, bold=True) -> str:
    text = f"{r['fd_tuned'] - r['fd_plain']:+.1f} ({r['lo']:+.1f} to {r['hi']:+.1f})"
    return f"**{text}**" if bold and r["verdict"] != "no significant difference" else text


class Report:
    def __init__(self, models: dict, grid: dict | None = None):
        self.models = models  # name -> ModelResults
        self.grid = grid  # name -> grid_cells(), to tell a cell left out of the grid from one not run yet
        self.lines = []
        self.data = {}

    def out(self, text=""):
        self.lines.append(text)

    def gains(self, name, m):
        """Per CFG: (sampler, steps) x scheduler: plain FD -> tuned FD at the confirmed rho, delta and interval."""
        schedulers = list(m.stores)
        rows, pending = [], []
        for cfg in sorted({c[2] for c in m.cells()}):
            self.out(f"#### {MODEL_NAMES.get(name, name)}, CFG {cfg:g}")
            self.out()
            self.out("| sampler | steps | " + " | ".join(SCHEDULER_LABELS.get(s, s) for s in schedulers) + " |")
            self.out("|---|---:|" + "---|" * len(schedulers))
            for sampler, steps, c in m.cells():
                if c != cfg:
                    continue
                texts = []
                for scheduler in schedulers:
                    r = m.confirmed(scheduler, sampler, steps, cfg)
                    if r is None:
                        if m.screen(scheduler, sampler, steps, cfg):
                            pending.append((scheduler, sampler, steps, cfg))
                            texts.append("pending")
                        else:
                            texts.append(self.absent(name, scheduler, sampler, steps, cfg))
                        continue
                    rows.append(r)
                    texts.append(f"{r['fd_plain']:.1f}; {r['rho']:.2f}: {delta_text(r)}")
                self.out(f"| {LABELS.get(sampler, sampler)} | {steps} | " + " | ".join(texts) + " |")
            self.out()
        return rows, pending

    def absent(self, model, scheduler, sampler, steps, cfg) -> str:
        if self.grid is None or (scheduler, sampler, steps, float(cfg)) in self.grid.get(model, ()):
            return "not run yet"
        return "-"

    def at_a_glance(self, rows, pending):
        """The table's samplers on the compared schedules, one line per model, CFG, sampler and step count."""
        by = {(r["model"], r["scheduler"], r["sampler"], r["steps"], r["cfg"]): r for r in rows}
        waiting = set(pending)
        schedulers = [s for s in SCHEDULER_ORDER if s in COMPARED_SCHEDULERS]
        cells = sorted({(k[0], k[4], k[2], k[3]) for k in by} | {(p[0], p[4], p[2], p[3]) for p in pending},
                       key=lambda c: (list(self.models).index(c[0]), c[3], c[1], SAMPLER_ORDER.get(c[2], 99)))
        self.out("| model | steps | CFG | sampler | " + " | ".join(SCHEDULER_LABELS[s] for s in schedulers) + " |")
        self.out("|---|---:|---:|---|" + "---|" * len(schedulers))
        for model, cfg, sampler, steps in cells:
            if sampler not in TABLE_SAMPLERS:
                continue
            texts = []
            for scheduler in schedulers:
                r = by.get((model, scheduler, sampler, steps, cfg))
                if r is None:
                    texts.append("pending" if (model, scheduler, sampler, steps, cfg) in waiting
                                 else self.absent(model, scheduler, sampler, steps, cfg))
                    continue
                delta = f"{r['fd_tuned'] - r['fd_plain']:+.1f}"
                if r["verdict"] != "no significant difference":
                    delta = f"**{delta} ({r['lo']:+.1f} to {r['hi']:+.1f})**"
                texts.append(f"{r['fd_plain']:.1f}; {r['rho']:.1f}: {delta}")
            self.out(f"| {MODEL_NAMES.get(model, model)} | {steps} | {cfg:g} | {LABELS.get(sampler, sampler)} | "
                     + " | ".join(texts) + " |")
        self.out()

    def same_rho(self, rows):
        """Is the best rho_bottom on each schedule the one on normal (and on the same side of 1)?"""
        by_cell = {}
        for r in rows:
            by_cell.setdefault((r["sampler"], r["steps"], r["cfg"]), {})[r["scheduler"]] = r
        tally = {}
        for per in by_cell.values():
            base = per.get(DEFAULT_SCHEDULER)
            if base is None:
                continue
            for scheduler, r in per.items():
                if scheduler == DEFAULT_SCHEDULER:
                    continue
                t = tally.setdefault(scheduler, dict(cells=0, same=0, same_side=0, both_held=0, base_held=0))
                t["cells"] += 1
                t["same"] += r["rho"] == base["rho"]
                t["same_side"] += (r["rho"] < 1) == (base["rho"] < 1)
                t["base_held"] += base["verdict"] == "better"
                t["both_held"] += base["verdict"] == "better" and r["verdict"] == "better"
        return tally

    def on_top(self, m):
        """The best Skip-Tuned setting (scheduler and rho, chosen on the screen) against the best plain scheduler
        (chosen on the screen), on the fresh block: does Skip Tuning add to the best schedule?"""
        results = []
        for sampler, steps, cfg in m.cells():
            plain, tuned = {}, {}
            for scheduler in m.stores:
                fds = m.screen(scheduler, sampler, steps, cfg)
                if 1.0 in fds:
                    plain[scheduler] = fds[1.0]
                r = m.confirmed(scheduler, sampler, steps, cfg)
                if r is not None:
                    tuned[scheduler] = (fds[r["rho"]], r["rho"])
            required = m.planned.get((sampler, steps, float(cfg))) or plain
            if len(tuned) < 2 or any(s not in tuned for s in required):
                continue  # pending: the best of every schedule of the cell's first tier is not known yet
            plain = {s: f for s, f in plain.items() if s in tuned}  # a later tier's pending cell waits
            best_plain = min(plain, key=plain.get)
            best_tuned = min(tuned, key=lambda s: tuned[s][0])
            rho = tuned[best_tuned][1]
            pair = m.paired((best_plain, sampler, steps, cfg, 1.0), (best_tuned, sampler, steps, cfg, rho))
            if pair is None:
                continue
            results.append(dict(sampler=sampler, steps=steps, cfg=cfg, schedules=sorted(tuned),
                                plain_scheduler=best_plain, tuned_scheduler=best_tuned, rho=rho,
                                fd_plain=pair["fd_a"], fd_tuned=pair["fd_b"], lo=pair["lo"], hi=pair["hi"],
                                verdict=pair["verdict"]))
        return results

    def equal_quality(self, m, on_top):
        """Plain steps (the fewest over the schedules) that match the best Skip-Tuned setting's FD."""
        results = []
        for r in on_top:
            curves = {s: m.plain_curve(s, r["sampler"], r["cfg"]) for s in m.stores}
            curves = {s: c for s, c in curves.items() if len(c) >= 3}
            if not curves:
                results.append(dict(r, match=None))
                continue
            matches = {s: equal_quality_steps(c, r["fd_tuned"]) for s, c in curves.items()}

            def order(item):
                kind, value = item[1]
                return {"below": 0, "at": 1, "above": 2}[kind], value

            scheduler, match = min(matches.items(), key=order)
            results.append(dict(r, match=match, match_scheduler=scheduler,
                                curve_steps=sorted(curves[scheduler])))
        return results

    def table_rows(self, rows):
        """The presets table's rows, per schedule, on each model: the confirmed best rho and its verdict."""
        by = {(r["model"], r["scheduler"], r["sampler"], r["steps"], r["cfg"]): r for r in rows}
        out = []
        for label, sampler, steps, cfg, (lo, hi) in TABLE_ROWS:
            for model in self.models:
                for scheduler in self.models[model].stores:
                    r = by.get((model, scheduler, sampler, steps, cfg))
                    if r is None:
                        continue
                    off = lo == hi == 1.0
                    if off:
                        status = "a value gained (the row says off)" if r["verdict"] == "better" else "held"
                    elif r["verdict"] == "better":
                        status = "held" if lo - 1e-9 <= r["rho"] <= hi + 1e-9 else "held, other rho"
                    else:
                        status = "reversed" if r["verdict"] == "worse" else "not beyond the noise"
                    out.append(dict(row=label, model=model, scheduler=scheduler, sampler=sampler, steps=steps,
                                    cfg=cfg, advised=(lo, hi), rho=r["rho"], delta=r["fd_tuned"] - r["fd_plain"],
                                    lo=r["lo"], hi=r["hi"], verdict=r["verdict"], status=status))
        return out

    def run(self):
        all_rows, all_pending = [], []
        self.out("### Does Skip Tuning gain on each schedule? Plain vs the screen's best rho_bottom, fresh seeds")
        self.out()
        self.out("Each cell: plain FD on the fresh block; the screen's best `rho_bottom` != 1: delta FD = tuned - "
                 "plain (95% paired-bootstrap interval), **bold** where it excludes 0. \"pending\": screened, not "
                 "yet confirmed; \"-\": not in the grid.")
        self.out()
        for name, m in self.models.items():
            rows, pending = self.gains(name, m)
            all_rows += [dict(r, model=name) for r in rows]
            all_pending += [(name, *p) for p in pending]
        self.data["cells"] = all_rows
        self.data["pending"] = all_pending

        self.out("### At a glance: the table's samplers on the compared schedules, all models")
        self.out()
        self.out("The cells above, one line each: plain FD; the best `rho_bottom`: delta FD, with its interval where "
                 "it excludes 0 (bold). \"-\": not in the grid; \"not run yet\": in the grid, not screened yet.")
        self.out()
        self.at_a_glance(all_rows, all_pending)

        self.out("### Is the best rho_bottom the same as with `normal`?")
        self.out()
        self.out("Over the cells confirmed on both: the schedule's confirmed best `rho_bottom` equal to normal's, "
                 "on the same side of 1, and where normal's beat plain, whether the schedule's did too.")
        self.out()
        self.out("| model | schedule | cells | same rho | same side of 1 | normal's held | held on both |")
        self.out("|---|---|---:|---:|---:|---:|---:|")
        tallies = {}
        for name in self.models:
            tally = self.same_rho([r for r in all_rows if r["model"] == name])
            tallies[name] = tally
            for scheduler, t in tally.items():
                self.out(f"| {MODEL_NAMES.get(name, name)} | {SCHEDULER_LABELS.get(scheduler, scheduler)} | "
                         f"{t['cells']} | {t['same']} | {t['same_side']} | {t['base_held']} | {t['both_held']} |")
        self.out()
        self.data["same_rho"] = tallies

        self.out("### Skip Tuning on top of the best schedule, and the plain steps it is worth")
        self.out()
        self.out("Per cell: the best plain schedule and the best Skip-Tuned setting (schedule and `rho_bottom`), "
                 "both chosen on the screen's seeds, compared on the fresh seeds (paired). Plain steps for the same "
                 "FD: each schedule's plain FD on the fresh seeds at 4, 6, 8, 10 and 15 steps, interpolated in "
                 "log(steps); the fewest over the schedules (choosing that schedule on the same seeds flatters "
                 "plain). Only cells confirmed on every schedule of the cell's first tier; \"schedules\": how many "
                 "were compared.")
        self.out()
        self.out("| model | CFG | sampler | steps | schedules | best plain schedule: FD | best Skip-Tuned: schedule, "
                 "rho: FD | delta (95% CI) | plain steps for the same FD |")
        self.out("|---|---:|---|---:|---:|---|---|---|---|")
        tops = [dict(r, model=name) for name, m in self.models.items() for r in self.equal_quality(m, self.on_top(m))]
        for r in sorted(tops, key=lambda r: (list(self.models).index(r["model"]), r["cfg"],
                                             SAMPLER_ORDER.get(r["sampler"], 99), r["steps"])):
            delta = f"{r['fd_tuned'] - r['fd_plain']:+.1f} ({r['lo']:+.1f} to {r['hi']:+.1f})"
            if r["verdict"] != "no significant difference":
                delta = f"**{delta}**"
            match = "" if r.get("match") is None else (
                f"{describe_match(r['match'], r['steps'])}, {SCHEDULER_LABELS.get(r['match_scheduler'])}")
            self.out(f"| {MODEL_NAMES.get(r['model'], r['model'])} | {r['cfg']:g} | {LABELS.get(r['sampler'])} | "
                     f"{r['steps']} | {len(r['schedules'])} | {SCHEDULER_LABELS.get(r['plain_scheduler'])}: "
                     f"{r['fd_plain']:.1f} | "
                     f"{SCHEDULER_LABELS.get(r['tuned_scheduler'])}, {r['rho']:.2f}: {r['fd_tuned']:.1f} | "
                     f"{delta} | {match} |")
        self.out()
        self.data["on_top"] = tops

        table = self.table_rows(all_rows)
        self.out("### The presets table's rows per schedule")
        self.out()
        self.out("A row \"held\" where the confirmed best `rho_bottom` lies in the row's range and beat plain beyond "
                 "the noise; \"held, other rho\" where a value outside the range did; for the rows that say off "
                 "(CFG 4), \"held\" where no value beat plain; \"reversed\" where the best value lost to plain.")
        self.out()
        self.out("| row | model | schedule | advised | confirmed best rho | delta (95% CI) | status |")
        self.out("|---|---|---|---|---:|---|---|")
        for t in table:
            advised = "off" if t["advised"] == (1.0, 1.0) else f"{t['advised'][0]:.1f}-{t['advised'][1]:.1f}"
            self.out(f"| {t['row']} | {MODEL_NAMES.get(t['model'], t['model'])} | "
                     f"{SCHEDULER_LABELS.get(t['scheduler'])} | {advised} | {t['rho']:.2f} | "
                     f"{t['delta']:+.1f} ({t['lo']:+.1f} to {t['hi']:+.1f}) | {t['status']} |")
        self.out()
        self.data["table_rows"] = table

        if all_pending:
            self.out(f"Pending (screened, not yet confirmed): {len(all_pending)} cells; the run resumes where it "
                     "stopped.")
            self.out()
        return all_rows, tops


def plot_deltas(rows, path, model):
    """Delta FD with its interval per schedule, panels CFG x sampler, one group per step count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["model"] == model]
    if not rows:
        return False
    cfgs = sorted({r["cfg"] for r in rows})
    samplers = sorted({r["sampler"] for r in rows}, key=lambda s: SAMPLER_ORDER.get(s, 99))
    schedulers = [s for s in SCHEDULER_ORDER if any(r["scheduler"] == s for r in rows)]
    steps_all = sorted({r["steps"] for r in rows})
    fig, axes = plt.subplots(len(cfgs), len(samplers), figsize=(4.4 * len(samplers), 3.4 * len(cfgs)),
                             squeeze=False)
    width = 0.8 / max(1, len(schedulers))
    for i, cfg in enumerate(cfgs):
        for j, sampler in enumerate(samplers):
            ax = axes[i][j]
            for k, scheduler in enumerate(schedulers):
                for x, steps in enumerate(steps_all):
                    r = next((r for r in rows if (r["cfg"], r["sampler"], r["scheduler"], r["steps"])
                              == (cfg, sampler, scheduler, steps)), None)
                    if r is None:
                        continue
                    pos = x - 0.4 + width * (k + 0.5)
                    delta = r["fd_tuned"] - r["fd_plain"]
                    filled = r["verdict"] != "no significant difference"
                    ax.errorbar(pos, delta, yerr=[[delta - r["lo"]], [r["hi"] - delta]], fmt="o",
                                color=f"C{k}", mfc=f"C{k}" if filled else "white", capsize=2,
                                label=SCHEDULER_LABELS.get(scheduler) if x == 0 else None)
                    ax.annotate(f"{r['rho']:.1f}", (pos, r["hi"]), textcoords="offset points", xytext=(0, 2),
                                fontsize=6, ha="center", color=f"C{k}")
            if not ax.lines:
                ax.text(0.5, 0.5, "pending", transform=ax.transAxes, ha="center", color="0.5")
            ax.axhline(0, color="0.5", lw=0.8)
            ax.set_xlim(-0.5, len(steps_all) - 0.5)
            ax.set_xticks(range(len(steps_all)))
            ax.set_xticklabels([f"{s} steps" for s in steps_all])
            ax.set_title(f"{LABELS.get(sampler, sampler)}, CFG {cfg:g}")
            ax.set_ylabel("FD tuned - plain (fresh seeds)")
            ax.grid(alpha=0.3, axis="y")
    handles = {}
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    axes[0][0].legend(handles.values(), handles.keys(), fontsize=7)
    fig.suptitle(f"{MODEL_NAMES.get(model, model)}: Skip Tuning's gain per schedule (best rho annotated; "
                 "filled: interval excludes 0)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_steps(models, rows, path, model):
    """Plain FD vs steps per schedule (lines) and each schedule's Skip-Tuned FD at its confirmed rho (squares),
    all on the fresh seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    m = models[model]
    rows = [r for r in rows if r["model"] == model]
    if len({r["steps"] for r in rows}) < 2:
        return False  # a curve needs two step counts
    cfgs = sorted({r["cfg"] for r in rows})
    samplers = sorted({r["sampler"] for r in rows}, key=lambda s: SAMPLER_ORDER.get(s, 99))
    fig, axes = plt.subplots(len(cfgs), len(samplers), figsize=(4.4 * len(samplers), 3.4 * len(cfgs)),
                             squeeze=False)
    for i, cfg in enumerate(cfgs):
        for j, sampler in enumerate(samplers):
            ax = axes[i][j]
            ticks = set()
            for k, scheduler in enumerate(s for s in SCHEDULER_ORDER if s in m.stores):
                curve = sorted(m.plain_curve(scheduler, sampler, cfg).items())
                if curve:
                    ax.plot([s for s, _ in curve], [f for _, f in curve], "o-", color=f"C{k}", markersize=3,
                            label=f"{SCHEDULER_LABELS.get(scheduler)} plain")
                    ticks |= {s for s, _ in curve}
                tuned = sorted((r["steps"], r["fd_tuned"]) for r in rows
                               if (r["scheduler"], r["sampler"], r["cfg"]) == (scheduler, sampler, cfg))
                if tuned:
                    ax.plot([s for s, _ in tuned], [f for _, f in tuned], "s", color=f"C{k}", mfc="none",
                            markersize=7, label=f"{SCHEDULER_LABELS.get(scheduler)} tuned")
            ax.set_xscale("log")
            ax.set_xticks(sorted(ticks))
            ax.set_xticklabels([str(t) for t in sorted(ticks)])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("steps")
            ax.set_ylabel("FD (fresh seeds, lower is better)")
            ax.set_title(f"{LABELS.get(sampler, sampler)}, CFG {cfg:g}")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6, ncol=2)
    fig.suptitle(f"{MODEL_NAMES.get(model, model)}: plain FD vs steps per schedule (lines) and Skip-Tuned at the "
                 "confirmed rho (squares)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    preset = PRESETS["schedulers"]
    stores = [f"{m}={os.path.relpath(default_store(m, preset), REPO_ROOT)}" for m in preset["models"]]
    parser.add_argument("--stores", nargs="*", default=stores, help="model=store pairs")
    parser.add_argument("--docs", help="write schedulers.md, schedulers.json and PNGs here")
    args = parser.parse_args(argv)
    ref = Reference(*reference())
    models = {}
    for pair in args.stores:
        name, path = pair.split("=", 1)
        path = path if os.path.isabs(path) else os.path.join(REPO_ROOT, path)
        if os.path.isdir(os.path.join(path, "samples")):
            models[name] = ModelResults(path, ref, planned=planned_schedules(preset, name))
    report = Report(models, {name: grid_cells(preset, name) for name in models})
    rows, _ = report.run()
    paths = {}
    for pair in args.stores:
        name, path = pair.split("=", 1)
        paths[name] = path if os.path.isabs(path) else os.path.join(REPO_ROOT, path)
    tiers = progress(preset, paths)
    report.data["progress"] = {str(t): v for t, v in tiers.items()}
    done = sum(d for d, _ in tiers.values())
    total = sum(t for _, t in tiers.values())
    report.lines.insert(0, f"Progress of `--preset schedulers`: {done} of {total} cells confirmed ("
                        + ", ".join(f"tier {t}: {d} of {a}" for t, (d, a) in tiers.items())
                        + "; tier 2's cells are plain runs for the step curves).\n")
    text = "\n".join(report.lines)
    print(text)
    if args.docs:
        os.makedirs(args.docs, exist_ok=True)
        with open(os.path.join(args.docs, "schedulers.md"), "w", encoding="utf-8") as f:
            f.write("<!-- generated by benchmarks/schedulers_report.py -->\n" + text + "\n")
        with open(os.path.join(args.docs, "schedulers.json"), "w", encoding="utf-8") as f:
            json.dump(report.data, f, indent=1, default=float)
        for name in models:
            plot_deltas(rows, os.path.join(args.docs, f"schedulers_delta_{name}.png"), name)
            plot_steps(models, rows, os.path.join(args.docs, f"schedulers_steps_{name}.png"), name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
