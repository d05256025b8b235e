"""One-command demo: the bundled model at low step counts, with and without Skip Tuning.

    python3 -m skip_tuning_demo.demo                 # about a minute on 2 CPU cores
    python3 -m skip_tuning_demo.demo --sampler euler --steps 4 6 10 --rho-bottom 1 0.8 0.7

Every cell of the grid uses the same seeds (the same initial noise for the same image slot),
so rows differ only by rho_bottom. Skip Tuning is applied with the project's own adapter
(skip_tuning_core.SkipScalingHooks, the hook path the A1111 script uses), sampling with a
diffusers scheduler. Writes <out>/skip_tuning_demo_grid.png and <out>/skip_tuning_demo_table.md
and prints the table: the classifier's accuracy on the requested class and the Frechet
distance (FD) of classifier features to the Fashion-MNIST test set, over --samples images
per cell. FD at this sample count is biased upward and noisy: compare it within the table,
and use benchmarks/quality.py for real numbers.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

DEFAULT_SAMPLER = "dpmpp_2m"
DEFAULT_STEPS = (4, 6, 10)
DEFAULT_RHOS = (1.0, 0.9, 0.8, 1.2)  # 1.2: the best value at CFG 4 on this model (README, Results)
DEFAULT_CFG = 4.0
DEFAULT_SAMPLES = 100
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


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def _cell_image(images: torch.Tensor, scale: int):
    """First SHOWN_PER_CELL images as a CELL_COLUMNS-wide tile (PIL, greyscale)."""
    import numpy as np
    from PIL import Image

    pixels = ((images[:SHOWN_PER_CELL, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    count, height, width = pixels.shape
    rows = (count + CELL_COLUMNS - 1) // CELL_COLUMNS
    tile = np.full((rows * (height + 1) + 1, CELL_COLUMNS * (width + 1) + 1), 255, dtype=np.uint8)
    for k in range(count):
        r, c = divmod(k, CELL_COLUMNS)
        tile[1 + r * (height + 1):1 + r * (height + 1) + height, 1 + c * (width + 1):1 + c * (width + 1) + width] = \
            pixels[k]
    image = Image.fromarray(tile, mode="L")
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)


def make_grid(cells: dict, rhos, steps_list, metrics: dict, title: str, path: str, scale: int = 2,
              reference=None) -> None:
    """Rows = rho_bottom, columns = step counts; each cell labelled with its accuracy and FD.

    ``reference`` = (steps, images): plain sampling at many steps, drawn right of the plain row.
    """
    from PIL import Image, ImageDraw

    sample_tile = _cell_image(next(iter(cells.values())), scale)
    tile_w, tile_h = sample_tile.size
    label_w, head_h, foot_h, pad = 150, 58, 34, 12
    columns = len(steps_list) + (1 if reference is not None else 0)
    width = label_w + columns * (tile_w + pad) + pad
    height = head_h + len(rhos) * (tile_h + foot_h + pad) + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    big, small = _font(16), _font(13)
    draw.text((pad, 8), title, fill="black", font=big)
    for j, steps in enumerate(steps_list):
        x = label_w + j * (tile_w + pad)
        draw.text((x + tile_w // 2 - 30, 34), f"{steps} steps", fill="black", font=big)
    for i, rho in enumerate(rhos):
        y = head_h + i * (tile_h + foot_h + pad)
        name = "plain (rho 1.0)" if rho == 1.0 else f"rho_bottom {rho:g}"
        draw.text((pad, y + tile_h // 2 - 10), name, fill="black" if rho == 1.0 else "#b00000", font=big)
        for j, steps in enumerate(steps_list):
            x = label_w + j * (tile_w + pad)
            canvas.paste(_cell_image(cells[(rho, steps)], scale).convert("RGB"), (x, y))
            acc, fd = metrics.get((rho, steps), (None, None))
            parts = []
            if acc is not None:
                parts.append(f"acc {100 * acc:.0f}%")
            if fd is not None:
                parts.append(f"FD {fd:.1f}")
            draw.text((x, y + tile_h + 4), "  ".join(parts), fill="black", font=small)
    if reference is not None:
        ref_steps, ref_images = reference
        x = label_w + len(steps_list) * (tile_w + pad) + pad
        draw.line([(x - pad, head_h - 6), (x - pad, height - pad)], fill="#999999", width=1)
        draw.text((x + 4, 34), f"reference: {ref_steps} steps", fill="black", font=big)
        canvas.paste(_cell_image(ref_images, scale).convert("RGB"), (x, head_h))
        draw.text((x, head_h + tile_h + 4), "plain, same seeds", fill="black", font=small)
    canvas.save(path)


def markdown_table(rhos, steps_list, metrics: dict, n: int, with_fd: bool) -> str:
    lines = [
        f"| steps | rho_bottom | accuracy on the requested class (n={n}) |" + (" FD (lower is better) | FD - plain |"
                                                                            if with_fd else ""),
        "|---:|---:|---:|" + ("---:|---:|" if with_fd else ""),
    ]
    for steps in steps_list:
        plain_fd = metrics[(1.0, steps)][1] if (1.0, steps) in metrics else None
        for rho in rhos:
            acc, fd = metrics[(rho, steps)]
            row = f"| {steps} | {'1.0 (plain)' if rho == 1.0 else f'{rho:g}'} | {100 * acc:.1f}% |"
            if with_fd:
                delta = "" if rho == 1.0 or plain_fd is None else f"{fd - plain_fd:+.1f}"
                row += f" {fd:.1f} | {delta} |"
            lines.append(row)
    return "\n".join(lines)


def parse_args(argv=None):
    from .sampling import SCHEDULER_NAMES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sampler", default=DEFAULT_SAMPLER, choices=SCHEDULER_NAMES)
    parser.add_argument("--steps", type=int, nargs="+", default=list(DEFAULT_STEPS))
    parser.add_argument("--rho-bottom", type=float, nargs="+", default=list(DEFAULT_RHOS),
                        help="rows of the grid; 1 = plain sampling (added if missing)")
    parser.add_argument("--rho-top", type=float, default=1.0)
    parser.add_argument("--cfg", type=float, default=DEFAULT_CFG, help="classifier-free guidance scale")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                        help="images per cell for the table (class-balanced; the grid shows one per class)")
    parser.add_argument("--reference-steps", type=int, default=50,
                        help="also draw plain sampling at this many steps for the shown seeds (0 = off)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs", help="output folder (created)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch CPU threads")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    from skip_tuning_core import SkipScalingHooks, rho_schedule, validate_rho

    from . import metrics as demo_metrics
    from .model import CLASS_NAMES, load_demo_model
    from .sampling import SCHEDULER_LABELS, make_noise, sample

    rhos = [validate_rho(r, "rho_bottom") for r in args.rho_bottom]
    if 1.0 not in rhos:
        rhos.insert(0, 1.0)
    rhos = list(dict.fromkeys(rhos))
    steps_list = sorted(dict.fromkeys(args.steps))
    n = max(SHOWN_PER_CELL, args.samples)
    started = time.perf_counter()

    unet, table, _ = load_demo_model()
    labels = torch.arange(n) % len(CLASS_NAMES)  # the first 10 images are one of each class
    noise = make_noise(n, args.seed)
    try:
        classifier = demo_metrics.get_classifier()
    except (FileNotFoundError, OSError) as exc:
        print(f"classifier weights unavailable ({exc}); the table will be empty", file=sys.stderr)
        classifier = None
    fd_reference = None
    if classifier is not None:
        try:
            fd_reference = demo_metrics.reference_stats()
        except (FileNotFoundError, OSError) as exc:
            print(f"no FD reference statistics ({exc}); reporting accuracy only", file=sys.stderr)

    evaluations = sum(s for s in steps_list) * len(rhos) + max(0, args.reference_steps)
    progress = _Progress(evaluations, f"sampling {SCHEDULER_LABELS.get(args.sampler, args.sampler)}")
    cells, metrics = {}, {}
    for rho in rhos:
        factors = rho_schedule(len(unet.output_blocks), rho, args.rho_top)
        for steps in steps_list:
            with SkipScalingHooks(unet, factors), torch.inference_mode():
                images = sample(unet, table, labels, args.sampler, steps, args.cfg, noise=noise.clone(),
                                step_seed=args.seed + 1, batch_size=n,
                                callback=lambda i, total, x: progress.update(1))
            cells[(rho, steps)] = images
            if classifier is not None:
                acc = demo_metrics.classifier_accuracy(images, labels, classifier)
                fd = (demo_metrics.frechet_classifier_distance(images, classifier, fd_reference)
                      if fd_reference is not None else None)
                metrics[(rho, steps)] = (acc, fd)
    reference = None
    if args.reference_steps > 0:
        with torch.inference_mode():
            reference = (args.reference_steps, sample(
                unet, table, labels[:SHOWN_PER_CELL], args.sampler, args.reference_steps, args.cfg,
                noise=noise[:SHOWN_PER_CELL].clone(), step_seed=args.seed + 1,
                callback=lambda i, total, x: progress.update(1)))
    progress.close()

    os.makedirs(args.out, exist_ok=True)
    grid_path = os.path.join(args.out, "skip_tuning_demo_grid.png")
    title = (f"Skip Tuning demo: {SCHEDULER_LABELS.get(args.sampler, args.sampler)}, CFG {args.cfg:g}, same seeds "
             f"in every cell; acc/FD over {n} samples per cell")
    make_grid(cells, rhos, steps_list, metrics, title, grid_path, reference=reference)
    print(f"\n{SCHEDULER_LABELS.get(args.sampler, args.sampler)}, CFG {args.cfg:g}, rho_top {args.rho_top:g}, "
          f"seed {args.seed}")
    text = ""
    if metrics:
        text = markdown_table(rhos, steps_list, metrics, n, fd_reference is not None)
        print(text)
        with open(os.path.join(args.out, "skip_tuning_demo_table.md"), "w", encoding="utf-8") as f:
            f.write(f"{SCHEDULER_LABELS.get(args.sampler, args.sampler)}, CFG {args.cfg:g}, {n} samples per row "
                    f"(the same seeds in every row). FD at this n is biased and noisy: compare within the table.\n\n")
            f.write(text + "\n")
    print(f"\ngrid: {grid_path}\ndone in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
