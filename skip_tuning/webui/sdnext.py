"""SD.Next (vladmandic/sdnext, diffusers only since 2025): Skip Tuning on ``shared.sd_model``'s U-Net (or U-ViT
transformer) through the diffusers adapter, ``skip_tuning.diffusers``.

Detection: ``modules.shared.native`` is SD.Next's "diffusers backend" flag. Only SD.Next defines it, and it is
True on every SD.Next since the original (ldm) backend was removed; an older SD.Next running its original
backend sets it False and has A1111's ``p.sd_model.model.diffusion_model``, so the A1111 path serves it.

Lifetime. SD.Next calls no ``process_before_every_sampling``; its order is the ``before_process`` callbacks,
``scripts.process``, ``p.init`` (which may load another model: a refiner change unloads the model), then per
batch ``process_batch``, the pipeline calls (base, hires, refiner) and ``postprocess_batch``, and at the end
``postprocess``, which it skips after an interrupt, a skip or an error (as it skips ``postprocess_batch`` after
an interrupt). So the tuning is attached in ``process_batch``, on the model loaded then, and removed by whichever
comes first: the next batch's ``process_batch``, ``postprocess``, the ``after_process`` callback (called from
the ``finally`` of ``processing.process_images``: errors, interrupts and skips included), or the
``before_process`` callback and ``process`` of the next generation (backstops). Removal is idempotent.

Passes and window, as on A1111: a forward pre-hook on the denoiser decides at every call whether it belongs
to a tuned pass (``p.is_hr_pass``) and to the start..end window of that pass's steps, and attaches the
adapter's hooks (``apply_skip_tuning``) or removes them. The refiner is another pipeline with its own U-Net,
so its steps are never tuned. SD.Next's detailer runs its passes inside the batch (on a copy of ``p``, through
``process_images_inner``): they run on the tuned U-Net as first passes, and their ``process``,
``process_batch`` and ``postprocess`` leave the enclosing batch's tuning alone.
"""

from __future__ import annotations

import logging

import torch

from .. import SkipTuningError
from ..diffusers import apply_skip_tuning
from ..diffusers.tuning import resolve_model
from ..infotext import WebuiParams
from .common import (
    NO_LONG_SKIPS,
    REFINER_UNTUNED,
    drop_infotext,
    in_window,
    logger,
    sampling_progress,
    warn,
    webui_state,
)

P_TUNING = "skip_tuning_sdnext"  # the BatchTuning made for p (copied into the detailer's p)
_LIVE: list = []  # BatchTunings not yet removed


def is_sdnext() -> bool:
    try:
        from modules import shared
    except Exception:  # outside a webui
        return False
    return getattr(shared, "native", None) is True


def route_logging() -> None:
    """Show Skip Tuning's warnings in SD.Next's console and log file.

    SD.Next sends the root logger to a NullHandler and logs through its own "sd" logger; sharing that
    logger's handler list (mutated in place when SD.Next re-initialises logging) keeps up with it.
    """
    try:
        from modules.logger import log
    except Exception:
        return
    logger.handlers = log.handlers
    logger.propagate = False
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)


class BatchTuning:
    """One batch's Skip Tuning of one denoiser.

    A pre-hook on the module the pipeline calls asks at every call whether the call is in a tuned pass and
    window, and attaches the adapter's hooks (``handle``, on ``model``'s submodules) or removes them;
    ``remove()`` detaches everything.

    SD.Next's model compile wraps the denoiser in ``torch.compile``, whose graphs do not see hooks added
    after they were compiled (torch does not guard module hooks by default): a tuned call would run the
    plain graph. So a call with the hooks attached runs that wrapper eagerly (``force_eager`` from the
    wrapper's own hooks, outside the compiled code), and its compiled graphs never hold the hooks.
    """

    def __init__(self, p, params: WebuiParams, model, handle, called):
        self.p, self.params, self.model, self.handle = p, params, model, handle
        self.state = webui_state()
        self.hooks = [called.register_forward_pre_hook(self._before_call)]
        self.compiled = called is not model
        self.eager = None  # the torch.compile stance to restore after an eager call
        if self.compiled:
            self.hooks.append(called.register_forward_hook(self._after_call, always_call=True))

    def wanted(self) -> bool:
        if not self.params.applies_to_pass(bool(getattr(self.p, "is_hr_pass", False))):
            return False
        return self.params.whole_sampling or in_window(sampling_progress(self.p, self.state), *self.params.window)

    def _before_call(self, module, args):
        wanted = self.wanted()
        if wanted and self.handle is None:
            try:
                self.handle = apply_skip_tuning(self.model, self.params.rho_bottom, self.params.rho_top)
            except Exception:  # never let Skip Tuning stop a generation
                logger.exception("Skip Tuning: could not attach its hooks; the rest of this batch runs without it")
                self.remove()
        elif not wanted and self.handle is not None:
            self.handle.remove()
            self.handle = None
        if self.compiled and self.handle is not None:
            self.eager = torch.compiler.set_stance("force_eager")

    def _after_call(self, module, args, output):
        self._restore_stance()

    def _restore_stance(self) -> None:
        if self.eager is not None:
            self.eager.__exit__(None, None, None)
            self.eager = None

    def remove(self) -> None:
        while self.hooks:
            self.hooks.pop().remove()
        self._restore_stance()
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        if self in _LIVE:
            _LIVE.remove(self)


def remove_all() -> None:
    """Remove every tuning this module attached (the backstop)."""
    while _LIVE:
        _LIVE[-1].remove()


def _nested(p) -> bool:
    """Whether p is a pass nested in a tuned generation (the detailer's copy of that generation's p)."""
    enclosing = getattr(p, P_TUNING, None)
    return enclosing in _LIVE and enclosing.p is not p


def start_generation(p) -> None:
    """From the script's ``process``: drop whatever an aborted generation left (not an enclosing one's tuning)."""
    if not _nested(p):
        remove_all()


def start_batch(p, params: WebuiParams) -> None:
    """From the script's ``process_batch``: tune the denoiser of the model loaded now (``p.init`` may have loaded
    another one since ``process``) for this batch's passes."""
    if _nested(p):
        return
    end_generation(p)
    if not params.enabled:
        return
    from modules import shared

    # First: the refiner check loads a configured refiner, and loading one makes SD.Next drop the model and load
    # it again on its next use; tune the model the batch will really sample with.
    refiner = _refiner_enabled(p)
    try:
        model, pipeline = resolve_model(shared.sd_model, ("unet", "transformer"))
        handle = apply_skip_tuning(model, params.rho_bottom, params.rho_top)
    except SkipTuningError:
        warn(p, f"{NO_LONG_SKIPS} ({type(getattr(shared, 'sd_model', None)).__name__})")
        drop_infotext(p)
        return
    if not handle.attached:  # every factor is 1
        return
    called = _called_module(pipeline, handle.model)
    if called is not handle.model and not hasattr(torch.compiler, "set_stance"):
        handle.remove()
        warn(p, f"the model is compiled (Compile Model) and torch {torch.__version__} cannot run it uncompiled for "
                "the tuned steps (torch 2.6 or newer can); nothing is changed")
        drop_infotext(p)
        return
    tuning = BatchTuning(p, params, handle.model, handle, called)
    _LIVE.append(tuning)
    setattr(p, P_TUNING, tuning)
    if refiner:
        warn(p, f"{REFINER_UNTUNED} on this webui (the refiner is another model)")


def _called_module(pipeline, model):
    """What the pipeline calls for ``model``: ``model``, or the torch.compile wrapper SD.Next's model compile put
    around it."""
    for name in ("unet", "transformer"):
        candidate = getattr(pipeline, name, None)
        if candidate is not None and getattr(candidate, "_orig_mod", None) is model:
            return candidate
    return model


def _refiner_enabled(p) -> bool:
    """SD.Next's own test for a refiner pass in this generation (it loads the refiner when one is configured)."""
    try:
        from modules.processing_helpers import is_refiner_enabled

        return bool(is_refiner_enabled(p))
    except Exception:  # an SD.Next without it
        return False


def end_generation(p) -> None:
    """From the script's ``postprocess``: remove the tuning p attached (not an enclosing generation's)."""
    tuning = getattr(p, P_TUNING, None)
    if tuning is not None and tuning.p is p:
        tuning.remove()


def on_before_or_after_process(p) -> None:
    """SD.Next's before_process/after_process callbacks: only a top-level generation runs them (the detailer's
    nested passes do not), so whatever is still attached then belongs to no running generation."""
    remove_all()
