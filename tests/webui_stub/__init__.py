"""A small stand-in of the Automatic1111 webui API, for testing the Skip Tuning script offline.

It is NOT the webui: it reimplements, in a few lines each, only the parts the script touches,
following A1111 1.10's contracts (modules/scripts.py, modules/processing.py, the sampler's CFG
denoiser, modules/infotext_utils.py's paste logic, scripts/xyz_grid.py), and a fake ``gradio``
that records the components a ``ui()`` builds (gradio itself is not installed here).

``activate()`` puts the fake ``modules`` and ``gradio`` packages on sys.path and removes them
(and everything imported from them) afterwards, so other tests never see them.
"""

from __future__ import annotations

import contextlib
import os
import sys

STUB_DIR = os.path.dirname(os.path.abspath(__file__))
_PREFIXES = ("modules", "gradio", "xyz_grid.py")


def _ours(name: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in _PREFIXES)


@contextlib.contextmanager
def activate():
    saved = {name: module for name, module in sys.modules.items() if _ours(name)}
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, STUB_DIR)
    try:
        yield
    finally:
        sys.path.remove(STUB_DIR)
        for name in [name for name in sys.modules if _ours(name)]:
            del sys.modules[name]
        sys.modules.update(saved)
