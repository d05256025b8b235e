"""The X/Y/Z plot axes: rho_bottom, rho_top and on/off, each written onto the cell's copy of ``p`` (read back by
``common.apply_xyz_overrides``). A1111, Forge, reForge and SD.Next all load their plot from a
``scripts/xyz_grid.py`` whose module holds ``AxisOption`` and the shared ``axis_options`` list."""

from __future__ import annotations

from .. import SkipTuningError, validate_rho
from ..infotext import parse_bool
from .common import XYZ_ENABLED, XYZ_RHO_BOTTOM, XYZ_RHO_TOP

XYZ_LABEL_PREFIX = "[Skip Tuning] "
XYZ_LABEL_RHO_BOTTOM = XYZ_LABEL_PREFIX + "rho_bottom"
XYZ_LABEL_RHO_TOP = XYZ_LABEL_PREFIX + "rho_top"
XYZ_LABEL_ENABLED = XYZ_LABEL_PREFIX + "On/Off"


def _apply(attribute: str):
    def apply(p, x, xs):
        setattr(p, attribute, round(float(x), 8))

    return apply


def _confirm_rho(name: str):
    def confirm(p, xs):
        for x in xs:
            try:
                validate_rho(x, name)
            except SkipTuningError as error:
                raise RuntimeError(f"Skip Tuning: {error}") from None

    return confirm


def _apply_enabled(p, x, xs):
    setattr(p, XYZ_ENABLED, parse_bool(x, "Skip Tuning on/off"))


def _confirm_enabled(p, xs):
    for x in xs:
        try:
            parse_bool(x, "Skip Tuning on/off")
        except SkipTuningError as error:
            raise RuntimeError(str(error)) from None


def find_xyz_module():
    """The loaded X/Y/Z plot script's module (every supported webui loads it as "xyz_grid.py")."""
    from modules import scripts

    for data in getattr(scripts, "scripts_data", []):
        module = getattr(data, "module", None)
        if data.script_class.__module__ == "xyz_grid.py" and hasattr(module, "AxisOption"):
            return module
    return None


def register_axes() -> bool:
    """Add the rho_bottom, rho_top and on/off axes to the X/Y/Z plot, once."""
    xyz = find_xyz_module()
    if xyz is None:
        return False
    if any(getattr(option, "label", "").startswith(XYZ_LABEL_PREFIX) for option in xyz.axis_options):
        return True
    xyz.axis_options.extend([
        xyz.AxisOption(XYZ_LABEL_RHO_BOTTOM, float, _apply(XYZ_RHO_BOTTOM), confirm=_confirm_rho("rho_bottom")),
        xyz.AxisOption(XYZ_LABEL_RHO_TOP, float, _apply(XYZ_RHO_TOP), confirm=_confirm_rho("rho_top")),
        xyz.AxisOption(XYZ_LABEL_ENABLED, str, _apply_enabled, confirm=_confirm_enabled,
                       choices=lambda: ["On", "Off"]),
    ])
    return True
