"""What the "Skip Tuning Compare" node does: one seed, a grid of step counts x rho_bottom values.

Every cell is sampled by ComfyUI's own ``comfy.sample.sample`` on the model that the
Skip Tuning node would make (``apply_skip_tuning``: a clone carrying the core's
output-block patch), then decoded with the VAE. The grid is labelled with PIL's
built-in font. A second grid of the same size shows each cell's amplified difference
from the untuned cell of its column, so small changes are visible.

The node class is in ``nodes``. ComfyUI is imported only inside
``sample_sweep``, so the list parsing and the grid drawing can be used and tested without it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import SkipTuningError, find_skip_layout, parse_rho_list, validate_rho
from .adapter import apply_skip_tuning, diffusion_model_of

MAX_STEPS = 10000
MAX_CELLS = 64


def parse_steps_list(text: str) -> tuple[int, ...]:
    """Parse "4, 8, 16" into step counts (commas or semicolons, whole numbers 1..10000)."""
    if not isinstance(text, str):
        raise SkipTuningError(f"steps_list must be text like '4, 8, 16', got {text!r}")
    body = text.strip()
    if len(body) >= 2 and (body[0], body[-1]) in (("[", "]"), ("(", ")")):
        body = body[1:-1]  # a pasted Python/JSON list
    items = [item.strip() for item in body.replace(";", ",").split(",")]
    if items == [""]:
        raise SkipTuningError("steps_list is empty: give at least one step count, e.g. '4, 8, 16'")
    steps = []
    for k, item in enumerate(items):
        if not item:
            raise SkipTuningError(f"steps_list {text!r}: entry {k + 1} is empty")
        if not (item.isascii() and item.isdigit()):
            raise SkipTuningError(f"steps_list {text!r}: entry {k + 1} ({item!r}) is not a whole number")
        value = int(item)
        if not 1 <= value <= MAX_STEPS:
            raise SkipTuningError(f"steps_list {text!r}: entry {k + 1} ({value}) must be between 1 and {MAX_STEPS}")
        steps.append(value)
    return tuple(steps)


def parse_rho_bottom_list(text: str) -> tuple[float, ...]:
    """Parse "1.0, 0.9, 0.8" with the core's rules (each value in [0, 2])."""
    values = parse_rho_list(text, "rho_bottom_list")
    if not values:
        raise SkipTuningError("rho_bottom_list is empty: give at least one value, e.g. '1.0, 0.9, 0.8'")
    return values


def parse_sweep(steps_list: str, rho_bottom_list: str) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Both lists, checked together (the grid may not exceed MAX_CELLS cells)."""
    steps = parse_steps_list(steps_list)
    rhos = parse_rho_bottom_list(rho_bottom_list)
    if len(steps) * len(rhos) > MAX_CELLS:
        raise SkipTuningError(
            f"{len(rhos)} rho_bottom values x {len(steps)} step counts = {len(steps) * len(rhos)} images; "
            f"the Compare node makes at most {MAX_CELLS} per run"
        )
    return steps, rhos


def rho_label(rho_bottom: float, rho_top: float) -> str:
    label = f"rho_bottom\n{rho_bottom:.2f}"
    if rho_bottom == 1.0 and rho_top == 1.0:
        label += " (off)"
    return label


def steps_label(count: int) -> str:
    return f"{count} step" if count == 1 else f"{count} steps"


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed bitmap font
        return ImageFont.load_default()


class GridLayout:
    """Where ``make_grid`` puts the title, labels and cells (pixels, top-left origin)."""

    def __init__(self, rows: int, columns: int, cell_height: int, cell_width: int,
                 row_labels: Sequence[str], column_labels: Sequence[str], title: str = ""):
        from PIL import Image, ImageDraw

        self.font_size = max(10, min(40, cell_height // 14))
        self.font = _font(self.font_size)
        self.gap = max(2, self.font_size // 4)
        self.pad = self.font_size // 2
        self._probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        self.line_height = max(self.text_size("Ag")[1], self.font_size)
        self.label_width = max(self.text_size(label)[0] for label in row_labels) + 2 * self.pad
        self.title_height = self.line_height + 2 * self.pad if title else 0
        self.header_height = max(self.text_size(label)[1] for label in column_labels) + 2 * self.pad
        top = self.title_height + self.header_height
        self.cells = [
            [(self.label_width + self.gap + c * (cell_width + self.gap), top + self.gap + r * (cell_height + self.gap))
             for c in range(columns)]
            for r in range(rows)
        ]
        width = self.label_width + columns * cell_width + (columns + 1) * self.gap
        if title:
            width = max(width, self.text_size(title)[0] + 2 * self.pad)
        self.size = (width, top + rows * cell_height + (rows + 1) * self.gap)
        self.cell_size = (cell_width, cell_height)

    def text_size(self, text: str) -> tuple[int, int]:
        left, top, right, bottom = self._probe.multiline_textbbox((0, 0), text, font=self.font)
        return right - left, bottom - top


def amplified_difference(image: torch.Tensor, baseline: torch.Tensor) -> tuple[torch.Tensor, float]:
    """|image - baseline| ([H, W, C] in 0..1) as grey, scaled so its largest change is white; and that scale.

    The largest channel difference of each pixel is shown, so a change in any channel counts.
    Identical images give black and a scale of 1.
    """
    difference = (image.float() - baseline.float()).abs().amax(dim=-1, keepdim=True)
    largest = float(difference.max())
    gain = 1.0 / largest if largest > 0 else 1.0
    return (difference * gain).clamp(0, 1).expand(*difference.shape[:-1], 3), gain


def amplification_label(gain: float) -> str:
    return f"|diff| x{gain:.0f}" if gain >= 10 else f"|diff| x{gain:.1f}"


def make_grid(
    cells: Sequence[Sequence[torch.Tensor]],
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    title: str = "",
    cell_tags: Sequence[Sequence[str]] | None = None,
) -> torch.Tensor:
    """Lay out ``cells[row][column]`` ([H, W, C] floats in 0..1) with labels; returns [1, H', W', 3].

    ``cell_tags[row][column]``, when given, is written in the top-left corner of that cell.
    """
    import numpy as np
    from PIL import Image, ImageDraw

    height, width = cells[0][0].shape[0], cells[0][0].shape[1]
    layout = GridLayout(len(cells), len(cells[0]), height, width, row_labels, column_labels, title)
    pad, font = layout.pad, layout.font
    canvas = Image.new("RGB", layout.size, (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, pad), title, fill=(200, 200, 200), font=font)
    for c, label in enumerate(column_labels):
        x = layout.cells[0][c][0] + (width - layout.text_size(label)[0]) // 2
        draw.multiline_text((x, layout.title_height + pad), label, fill=(235, 235, 235), font=font, align="center")
    for r, label in enumerate(row_labels):
        y = layout.cells[r][0][1] + (height - layout.text_size(label)[1]) // 2
        draw.multiline_text((pad, y), label, fill=(235, 235, 235), font=font)
        for c in range(len(column_labels)):
            image = cells[r][c].detach().float().clamp(0, 1).cpu().numpy()
            if image.shape[-1] == 1:
                image = image.repeat(3, axis=-1)
            tile = Image.fromarray((image[..., :3] * 255.0).round().astype(np.uint8))
            canvas.paste(tile, layout.cells[r][c])
            if cell_tags is not None and cell_tags[r][c]:
                x, y = layout.cells[r][c]
                tag_width, tag_height = layout.text_size(cell_tags[r][c])
                draw.rectangle((x, y, x + tag_width + 2 * layout.gap, y + tag_height + 2 * layout.gap), fill=(0, 0, 0))
                draw.text((x + layout.gap, y + layout.gap), cell_tags[r][c], fill=(255, 220, 0), font=font)
    array = np.asarray(canvas, dtype=np.float32) / 255.0
    return torch.from_numpy(array).unsqueeze(0)


def check_model(model) -> int:
    """The model's number of long skips; a clear error for models without them (before sampling)."""
    layout = find_skip_layout(diffusion_model_of(model))
    if layout is None:
        raise SkipTuningError(
            "Skip Tuning Compare needs a model with long skips (U-Nets such as SD1.x, SD2.x, SDXL; U-ViTs such as "
            "HunyuanDiT); this model has none, so every row would be the same image"
        )
    return layout.n_skips


def check_sweep_inputs(steps_list=None, rho_bottom_list=None, rho_top=None) -> None:
    """Raise for lists or a rho_top that no model could sweep; None (an input fed by a link, not known when
    the prompt is queued) is checked when the node runs, by ``sample_sweep``."""
    if steps_list is not None:
        parse_steps_list(steps_list)
    if rho_bottom_list is not None:
        parse_rho_bottom_list(rho_bottom_list)
    if steps_list is not None and rho_bottom_list is not None:
        parse_sweep(steps_list, rho_bottom_list)
    if rho_top is not None:
        validate_rho(rho_top, "rho_top")


def sample_sweep(model, positive, negative, latent, vae, seed, sampler_name, scheduler, cfg, steps_list,
                 rho_bottom_list, rho_top):
    """The Compare node's work: (grid, every image as a batch, the grid of differences).

    Each cell is ComfyUI's ``comfy.sample.sample`` (what KSampler runs) on the model the Skip Tuning node
    makes, with one progress bar over the sweep. Cancel (ComfyUI's interrupt) is honoured at every step,
    where ComfyUI also checks it, and between cells, so a cancelled sweep stops within a step.
    """
    import comfy.model_management
    import comfy.sample
    import comfy.utils
    import latent_preview

    steps, rho_bottoms = parse_sweep(steps_list, rho_bottom_list)
    rho_top = validate_rho(rho_top, "rho_top")
    check_model(model)
    # The Skip Tuning node's own code path: a clone with the core's output-block patch.
    models = [apply_skip_tuning(model, rho_bottom, rho_top) for rho_bottom in rho_bottoms]
    # The differences need the untuned model in every column: the rho_bottom 1.0 row when rho_top
    # is 1.0 too, else one more (unshown) row of plain sampling.
    baseline_row = rho_bottoms.index(1.0) if rho_top == 1.0 and 1.0 in rho_bottoms else len(models)
    if baseline_row == len(models):
        models.append(model)

    latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    noise_mask = latent.get("noise_mask")

    total = sum(steps) * len(models)
    done = 0
    progress = comfy.utils.ProgressBar(total)
    previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)
    disable_pbar = not comfy.utils.PROGRESS_BAR_ENABLED
    stop_if_cancelled = comfy.model_management.throw_exception_if_processing_interrupted

    def make_callback(offset):
        def callback(step, x0, x, total_steps):
            stop_if_cancelled()
            preview = previewer.decode_latent_to_preview_image("JPEG", x0) if previewer else None
            progress.update_absolute(offset + step + 1, total, preview)

        return callback

    cells, batches = [], []
    for patched in models:
        row = []
        for step_count in steps:
            stop_if_cancelled()
            samples = comfy.sample.sample(
                patched, noise, step_count, cfg, sampler_name, scheduler, positive, negative, latent_image,
                denoise=1.0, noise_mask=noise_mask, callback=make_callback(done),
                disable_pbar=disable_pbar, seed=seed,
            )
            done += step_count
            progress.update_absolute(done, total)
            stop_if_cancelled()
            images = vae.decode(samples)
            if images.ndim == 5:
                images = images.reshape(-1, *images.shape[-3:])
            row.append(images[0])
            if len(cells) < len(rho_bottoms):
                batches.append(images)
        cells.append(row)

    title = f"seed {seed}, {sampler_name}/{scheduler}, cfg {cfg:g}, rho_top {rho_top:.2f}"
    row_labels = [rho_label(rho_bottom, rho_top) for rho_bottom in rho_bottoms]
    column_labels = [steps_label(count) for count in steps]
    grid = make_grid(cells[:len(rho_bottoms)], row_labels, column_labels, title)
    differences, tags = [], []
    for r in range(len(rho_bottoms)):
        pairs = [amplified_difference(cells[r][c], cells[baseline_row][c]) for c in range(len(steps))]
        differences.append([image for image, _ in pairs])
        tags.append(["baseline" if r == baseline_row else amplification_label(gain) for _, gain in pairs])
    difference_grid = make_grid(differences, row_labels, column_labels, title, tags)
    return grid, torch.cat(batches, dim=0), difference_grid


__all__ = [
    "GridLayout", "amplified_difference", "check_sweep_inputs", "make_grid", "parse_sweep", "sample_sweep",
]
