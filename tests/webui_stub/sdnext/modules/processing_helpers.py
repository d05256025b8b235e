"""Stand-in of SD.Next's modules.processing_helpers.is_refiner_enabled (SD.Next reads shared.sd_refiner there,
which loads a configured refiner)."""

from modules import shared


def is_refiner_enabled(p):
    return p.enable_hr and p.refiner_steps > 0 and 0 < p.refiner_start < 1 and shared.sd_refiner is not None
