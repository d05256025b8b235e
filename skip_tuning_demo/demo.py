"""One-command demo: the bundled model where Skip Tuning changes it, with and without it.

    python3 -m skip_tuning_demo.demo                     # about 3 minutes on 2 CPU cores
    python3 -m skip_tuning_demo.demo --compare dpmpp_2m:4:15:1.2 unipc:1:4:0.6 --samples 200

Each comparison (sampler:cfg:steps:rho_bottom) samples the same seeds twice, plainly and with
Skip Tuning, so the two differ only by rho_bottom: the same initial noise, the same per-step
noise for ancestral samplers, one image of every class in the first ten. The defaults are the
settings where the project's measurements (docs/results.md) found a difference beyond the
noise: weaker skips without guidance at 4 steps, stronger skips with guidance at 10 steps.
Skip Tuning is applied with the project's own adapter (skip_tuning.SkipScalingHooks, the
hook path the A1111 script uses), sampling with diffusers' schedulers.

Writes <out>/skip_tuning_demo_grid.png (per comparison: plain, tuned, and |tuned - plain|
amplified so the largest change is white) and <out>/skip_tuning_demo_table.md, and prints the
table: per comparison the classifier's accuracy on the requested class, the Frechet distance
(FD) of classifier features to the Fashion-MNIST test set, and delta FD = tuned - plain with
its 95% interval from a bootstrap over the shared seeds. Only a delta whose interval excludes
0 is beyond the noise. Absolute FDs at this sample count are biased upward; the paired delta
is what to read.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

# Hundreds of 128x128 eigensolves for the intervals: one BLAS thread is several times faster
# than two on matrices this small. Must be set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402

# (sampler, cfg, steps, rho_bottom): the README's presets where the effect is largest and was
# confirmed on fresh seeds.
DEFAULT_COMPARISONS = (
    ("euler_a", 1.0, 4, 0.6),
    ("dpmpp_2m", 1.0, 4, 0.7),
    ("euler_a", 4.0, 6, 1.2),
)
DEFAULT_SAMPLES = 250  # enough for the paired interval to exclude 0 for these effects, in under 2 minutes
BOOTSTRAP_DRAWS = 300
SHOWN_PER_CELL = 10  # one image per class in each grid cell
CELL_COLUMNS = 5


class _Progress:
    """tqdm when it is installed (it comes with diffusers), else a plain counter on stderr."""

    def __init__(self, total: int, desc: str):
        try:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="step")
        except ImportError:
            self._bar = None
            self.total, self.done, self.desc = total, 0, desc

    def update(self, n: int = 1):
        if self._bar is not None:
            self._bar.update(n)
            return
        self.done += n
        print(f"\r{self.desc}: {self.done}/{self.total}", end="", file=sys.stderr, flush=True)

    def close(self):
        if self._bar is not None:
            self._bar.close()
        else:
            print(file=sys.stderr)


class Comparison:
    """One row of the demo: plain vs Skip Tuning at one sampler, guidance scale and step count."""

    def __init__(self, sampler: str, cfg: float, steps: int, rho_bottom: float):
        self.sampler, self.cfg, self.steps, self.rho_bottom = sampler, cfg, steps, rho_bottom

    def describe(self) -> str:
        from .sampling import SCHEDULER_LABELS

        guidance = "no guidance" if self.cfg == 1.0 else f"CFG {self.cfg:g}"
        steps = "1 step" if self.steps == 1 else f"{self.steps} steps"
        return f"{SCHEDULER_LABELS.get(self.sampler, self.sampler)}, {guidance}, {steps}"

    def skips(self) -> str:
        return f"rho_bottom {self.rho_bottom:g} ({'weaker' if self.rho_bottom < 1 else 'stronger'} skips)"


def parse_comparison(text: str) -> Comparison:
    """"euler_a:1:4:0.6" -> Comparison(sampler, cfg, steps, rho_bottom)."""
    from skip_tuning import SkipTuningError, validate_rho

    from .sampling import SCHEDULER_NAMES

    parts = text.split(":")
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"{text!r}: expected sampler:cfg:steps:rho_bottom, e.g. euler_a:1:4:0.6")
    sampler, cfg, steps, rho = parts
    if sampler not in SCHEDULER_NAMES:
        raise argparse.ArgumentTypeError(f"{text!r}: unknown sampler {sampler!r} (one of {', '.join(SCHEDULER_NAMES)})")
    try:
        cfg, steps, rho = float(cfg), int(steps), float(rho)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error}") from None
    if not (cfg >= 0 and steps >= 1):
        raise argparse.ArgumentTypeError(f"{text!r}: cfg must be >= 0 and steps >= 1")
    try:
        rho = validate_rho(rho, "rho_bottom")
    except SkipTuningError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error}") from None
    if rho == 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: rho_bottom 1 is plain sampling, the baseline of every row")
    return Comparison(sampler, cfg, steps, rho)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def _tile(pixels, scale: int):
    """The first SHOWN_PER_CELL of [N, H, W] uint8 pixels as a CELL_COLUMNS-wide tile (PIL, greyscale)."""
    import numpy as np
    from PIL import Image

    count, height, width = pixels[:SHOWN_PER_CELL].shape
    rows = (count + CELL_COLUMNS - 1) // CELL_COLUMNS
    tile = np.full((rows * (height + 1) + 1, CELL_COLUMNS * (width + 1) + 1), 128, dtype=np.uint8)
    for k in range(count):
        r, c = divmod(k, CELL_COLUMNS)
        top, left = 1 + r * (height + 1), 1 + c * (width + 1)
        tile[top:top + height, left:left + width] = pixels[k]
    image = Image.fromarray(tile, mode="L")
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)


def image_pixels(images: torch.Tensor):
    """[N, 1, H, W] images in [-1, 1] as [N, H, W] uint8."""
    return ((images[:, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def amplified_difference(tuned: torch.Tensor, plain: torch.Tensor):
    """|tuned - plain| of the shown images as uint8, scaled so the largest change is white; and the factor.

    The factor is relative to showing the difference at its true size (a change across the whole
    -1..1 range is white at factor 1); identical images give black and a factor of 1.
    """
    difference = (tuned[:SHOWN_PER_CELL, 0] - plain[:SHOWN_PER_CELL, 0]).abs()
    largest = float(difference.max())
    factor = 2.0 / largest if largest > 0 else 1.0
    return (difference * (factor * 127.5)).clamp(0, 255).round().to(torch.uint8).numpy(), factor


def make_grid(rows: list, title: str, path: str, scale: int = 2) -> None:
    """One row per comparison: plain, tuned, amplified difference; each with its numbers below.

    ``rows``: (comparison, plain images, tuned images, result or None) with result the dict of
    ``compare_features``.
    """
    from PIL import Image, ImageDraw

    tile_w, tile_h = _tile(image_pixels(rows[0][1]), scale).size
    big, small = _font(16), _font(13)
    head_h, foot_h, pad = 64, 40, 14
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = int(max(measure.textlength(text, font=big) for row in rows
                      for text in (row[0].describe(), row[0].skips()))) + 2 * pad
    width = label_w + 3 * (tile_w + pad) + pad
    height = head_h + len(rows) * (tile_h + foot_h + pad) + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 8), title, fill="black", font=big)
    for j, header in enumerate(("plain (rho 1.0)", "Skip Tuning", "|tuned - plain|, amplified")):
        draw.text((label_w + j * (tile_w + pad), 38), header, fill="black", font=big)
    for i, (comparison, plain, tuned, result) in enumerate(rows):
        y = head_h + i * (tile_h + foot_h + pad)
        draw.text((pad, y + tile_h // 2 - 20), comparison.describe(), fill="black", font=big)
        # The colours of the node's rho profile: blue weakens the skips, orange strengthens them.
        skips_colour = "#2f6fb0" if comparison.rho_bottom < 1 else "#c0701a"
        draw.text((pad, y + tile_h // 2 + 2), comparison.skips(), fill=skips_colour, font=big)
        difference, factor = amplified_difference(tuned, plain)
        tiles = (_tile(image_pixels(plain), scale), _tile(image_pixels(tuned), scale), _tile(difference, scale))
        for j, tile in enumerate(tiles):
            canvas.paste(tile.convert("RGB"), (label_w + j * (tile_w + pad), y))
        x = label_w + 2 * (tile_w + pad)
        tag = f"x{factor:.0f}" if factor >= 10 else f"x{factor:.1f}"
        tag_box = draw.textbbox((x + 4, y + 4), tag, font=big)
        draw.rectangle((tag_box[0] - 3, tag_box[1] - 3, tag_box[2] + 3, tag_box[3] + 3), fill="black")
        draw.text((x + 4, y + 4), tag, fill="#ffd000", font=big)
        if result is None:
            continue
        below = y + tile_h + 4
        for j, key in enumerate(("plain", "tuned")):
            text = f"acc {100 * result['acc_' + key]:.0f}%"
            if "fd_" + key in result:
                text = f"FD {result['fd_' + key]:.1f}   " + text
            draw.text((label_w + j * (tile_w + pad), below), text, fill="black", font=small)
        if "delta" in result:
            draw.text((x, below), f"delta FD {result['delta']:+.1f} ({result['lo']:+.1f} to {result['hi']:+.1f})",
                      fill="black", font=small)
            beyond = result["verdict"] != "no significant difference"
            note = f"{result['verdict']}, beyond the noise" if beyond else "within the noise"
            colour = "#006400" if result["verdict"] == "better" else "#b00000" if beyond else "#666666"
            draw.text((x, below + 17), note, fill=colour, font=small)
    canvas.save(path)


def compare_features(reference, plain_features, tuned_features) -> dict:
    """FD of both sides and the paired delta with its 95% interval and verdict."""
    from .metrics import paired_bootstrap, paired_interval, paired_verdict

    fd_plain, fd_tuned, draws = paired_bootstrap(reference, plain_features, tuned_features, n_boot=BOOTSTRAP_DRAWS)
    lo, hi = paired_interval(draws)
    return {"fd_plain": fd_plain, "fd_tuned": fd_tuned, "delta": fd_tuned - fd_plain, "lo": lo, "hi": hi,
            "verdict": paired_verdict(lo, hi)}


def _sample(unet, table, labels, comparison: Comparison, noise, step_seed: int, progress: _Progress, hooks):
    from .sampling import sample

    with hooks, torch.inference_mode():
        return sample(unet, table, labels, comparison.sampler, comparison.steps, comparison.cfg, noise=noise.clone(),
                      step_seed=step_seed, batch_size=labels.shape[0], callback=lambda i, total, x: progress.update(1))


def markdown_table(rows: list, n: int) -> str:
    with_fd = all("delta" in result for *_, result in rows)
    lines = [
        "| sampler, guidance, steps | rho_bottom | accuracy plain -> tuned |"
        + (" FD plain | FD tuned | delta FD (95% interval) | beyond the noise? |" if with_fd else ""),
        "|---|---:|---:|" + ("---:|---:|---|---|" if with_fd else ""),
    ]
    for comparison, _, _, result in rows:
        line = (f"| {comparison.describe()} | {comparison.rho_bottom:g} | "
                f"{100 * result['acc_plain']:.1f}% -> {100 * result['acc_tuned']:.1f}% |")
        if with_fd:
            beyond = result["verdict"] != "no significant difference"
            line += (f" {result['fd_plain']:.1f} | {result['fd_tuned']:.1f} | {result['delta']:+.1f} "
                     f"({result['lo']:+.1f} to {result['hi']:+.1f}) | "
                     + (f"**yes: {result['verdict']}**" if beyond else "no") + " |")
        lines.append(line)
    notes = [f"{n} samples per side, the same seeds for plain and tuned."]
    if with_fd:
        notes.append("delta FD = FD(tuned) - FD(plain), lower is better; the interval is a paired bootstrap over the "
                     "seeds, and only a delta whose interval excludes 0 is beyond the noise.")
    return "\n".join(lines) + "\n\n" + " ".join(notes)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", type=parse_comparison, nargs="+", metavar="SAMPLER:CFG:STEPS:RHO",
                        default=[Comparison(*c) for c in DEFAULT_COMPARISONS],
                        help="comparisons, one grid row each (default: "
                             + " ".join(":".join(f"{v:g}" if isinstance(v, float) else str(v) for v in c)
                                        for c in DEFAULT_COMPARISONS) + ")")
    parser.add_argument("--rho-top", type=float, default=1.0)
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                        help="images per side of each comparison (class-balanced; the grid shows one per class)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs", help="output folder (created)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch CPU threads")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    from skip_tuning import SkipScalingHooks, rho_schedule, validate_rho

    from . import metrics as demo_metrics
    from .metrics import FrechetReference
    from .model import CLASS_NAMES, load_demo_model
    from .sampling import make_noise

    rho_top = validate_rho(args.rho_top, "rho_top")
    n = max(SHOWN_PER_CELL, args.samples)
    started = time.perf_counter()

    unet, table, _ = load_demo_model()
    labels = torch.arange(n) % len(CLASS_NAMES)  # the first 10 images are one of each class
    noise = make_noise(n, args.seed)
    try:
        classifier = demo_metrics.get_classifier()
    except (FileNotFoundError, OSError) as exc:
        print(f"classifier weights unavailable ({exc}); no table", file=sys.stderr)
        classifier = None
    reference = None
    if classifier is not None:
        try:
            reference = FrechetReference(*demo_metrics.reference_stats())
        except (FileNotFoundError, OSError) as exc:
            print(f"no FD reference statistics ({exc}); reporting accuracy only", file=sys.stderr)

    progress = _Progress(sum(2 * c.steps for c in args.compare), "sampling")
    rows = []
    for comparison in args.compare:
        factors = rho_schedule(len(unet.output_blocks), comparison.rho_bottom, rho_top)
        plain = _sample(unet, table, labels, comparison, noise, args.seed + 1, progress, contextlib.nullcontext())
        tuned = _sample(unet, table, labels, comparison, noise, args.seed + 1, progress,
                        SkipScalingHooks(unet, factors))
        result = None
        if classifier is not None:
            result = {"acc_plain": demo_metrics.classifier_accuracy(plain, labels, classifier),
                      "acc_tuned": demo_metrics.classifier_accuracy(tuned, labels, classifier)}
            if reference is not None:
                result.update(compare_features(reference, demo_metrics.compute_features(plain, classifier),
                                               demo_metrics.compute_features(tuned, classifier)))
        rows.append((comparison, plain, tuned, result))
    progress.close()

    os.makedirs(args.out, exist_ok=True)
    grid_path = os.path.join(args.out, "skip_tuning_demo_grid.png")
    title = (f"Skip Tuning demo: the same seeds with and without Skip Tuning (rho_top {rho_top:g}); "
             f"FD and accuracy over {n} samples per side")
    make_grid(rows, title, grid_path)
    if classifier is not None:
        text = markdown_table(rows, n)
        print("\n" + text)
        with open(os.path.join(args.out, "skip_tuning_demo_table.md"), "w", encoding="utf-8") as f:
            f.write(text + "\n")
    print(f"\ngrid: {grid_path}\ndone in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
