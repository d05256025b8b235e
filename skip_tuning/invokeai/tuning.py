"""What the InvokeAI node does around InvokeAI's own denoise, without importing InvokeAI (tested without it).

The tuning itself is ``skip_tuning.diffusers``: InvokeAI's SD1.x/SD2.x/SDXL denoising runs a diffusers
``UNet2DConditionModel``, so the node hands that U-Net and the scheduler it samples with to
``apply_skip_tuning``: the same rho schedule, skip numbering and window convention as every other host.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

from .. import SkipTuningError, parse_rho_list, validate_percent_window
from ..diffusers import TuningHandle, apply_skip_tuning

# InvokeAI's base model types whose main model is a diffusers UNet2DConditionModel with long skips.
TUNABLE_BASES = {"sd-1": "SD1.x", "sd-2": "SD2.x", "sdxl": "SDXL", "sdxl-refiner": "SDXL Refiner"}
WINDOW_NAMES = ("skip_tuning_start", "skip_tuning_end")


def check_rho_per_skip(text: str) -> str:
    """The field as typed, once every entry parses as a rho in range (the count is checked against the model)."""
    parse_rho_list(text)
    return text


def check_window(start: float, end: float) -> None:
    validate_percent_window(start, end, WINDOW_NAMES)


def check_base(base) -> None:
    """Refuse a model without long skips before anything is loaded (FLUX, SD3 and the other transformers)."""
    name = getattr(base, "value", base)
    if name not in TUNABLE_BASES:
        raise SkipTuningError(
            f"Skip Tuning scales the long skips of a U-Net ({', '.join(TUNABLE_BASES.values())}); the model "
            f"connected to this node is a {name!r} model. Use the core Denoise node for it."
        )


class InvocationTuning:
    """The Skip Tuning of one invocation: applied by whichever denoise path runs to the live U-Net and the
    scheduler it samples with, and removed when the invocation ends (with ``with``: success, error or cancel).

    ``reached`` tells whether a path applied it, so a future InvokeAI that no longer calls the overridden
    methods is reported instead of silently giving an untuned image.
    """

    def __init__(self, rho_bottom: float, rho_top: float, rho_per_skip: str, start: float, end: float):
        self.settings = {"rho_bottom": rho_bottom, "rho_top": rho_top, "rho_per_skip": rho_per_skip or None,
                         "start": start, "end": end}
        self.handles: list[TuningHandle] = []
        self.reached = False

    def apply(self, unet, scheduler) -> TuningHandle:
        handle = apply_skip_tuning(unet, **self.settings, scheduler=scheduler)
        self.handles.append(handle)
        self.reached = True
        return handle

    def remove(self) -> None:
        while self.handles:
            self.handles.pop().remove()

    def __enter__(self) -> InvocationTuning:
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()


class _Forward(logging.Handler):
    def __init__(self, sink):
        super().__init__(logging.INFO)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = "error" if record.levelno >= logging.ERROR else record.levelname.lower()
            getattr(self.sink, level, self.sink.info)(self.format(record))
        except Exception:
            self.handleError(record)


@contextmanager
def forward_messages(sink, logger_name: str = "skip_tuning"):
    """Hand the project's log records (info and above) to ``sink`` (InvokeAI's ``context.logger``, which writes
    to InvokeAI's console and log file) while the invocation runs; InvokeAI configures only its own loggers."""
    logger = logging.getLogger(logger_name)
    handler = _Forward(sink)
    level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
