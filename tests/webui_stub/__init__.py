"""Small stand-ins of the Automatic1111 and SD.Next webui APIs, for testing the Skip Tuning script offline.

They are NOT the webuis: they reimplement, in a few lines each, only the parts the script touches.
``modules/`` follows A1111 1.10's contracts (modules/scripts.py, modules/processing.py, the sampler's CFG
denoiser, modules/infotext_utils.py's paste logic, scripts/xyz_grid.py), with a fake ``gradio`` that
records the components a ``ui()`` builds (gradio itself is not installed here); ``sdnext/modules/``
follows SD.Next's (scripts_manager.py's runner, processing.py and processing_diffusers.py's order,
shared.state's step counting, script_callbacks' before/after_process).

``activate()`` (A1111) or ``activate(SDNEXT_DIR)`` puts the fake packages on sys.path and removes them
(and everything imported from them) afterwards, so other tests never see them.
"""

from __future__ import annotations

import contextlib
import os
import sys

STUB_DIR = os.path.dirname(os.path.abspath(__file__))
SDNEXT_DIR = os.path.join(STUB_DIR, "sdnext")
_PREFIXES = ("modules", "gradio", "xyz_grid.py")


def _ours(name: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in _PREFIXES)


@contextlib.contextmanager
def activate(root: str = STUB_DIR):
    saved = {name: module for name, module in sys.modules.items() if _ours(name)}
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, root)
    try:
        yield
    finally:
        sys.path.remove(root)
        for name in [name for name in sys.modules if _ours(name)]:
            del sys.modules[name]
        sys.modules.update(saved)
