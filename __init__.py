"""Skip Tuning: ComfyUI entry point.

ComfyUI imports this folder as a package and reads NODE_CLASS_MAPPINGS,
NODE_DISPLAY_NAME_MAPPINGS and WEB_DIRECTORY. The node modules import nothing from
ComfyUI at load time, so the repository also imports cleanly without it (tests, and
Automatic1111/Forge, which load scripts/ and never this file). Imported as a plain
module rather than a package, it registers nothing.

Node modules: ``nodes.py`` (Skip Tuning, Skip Tuning (Advanced)) and every
``nodes_*.py`` beside it, each with its own NODE_CLASS_MAPPINGS; one that fails to
import is logged and skipped so that the others still load.
"""

import importlib
import logging
import os

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
WEB_DIRECTORY = "./js"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]


def _register(module) -> None:
    NODE_CLASS_MAPPINGS.update(getattr(module, "NODE_CLASS_MAPPINGS", {}))
    NODE_DISPLAY_NAME_MAPPINGS.update(getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", {}))


if __package__:
    from . import nodes as _nodes

    _register(_nodes)

    _here = os.path.dirname(os.path.abspath(__file__))
    for _file in sorted(os.listdir(_here)):
        if _file.startswith("nodes_") and _file.endswith(".py"):
            try:
                _register(importlib.import_module(f".{_file[:-3]}", __package__))
            except Exception:
                logging.getLogger("skip_tuning").exception("Skip Tuning: could not load %s", _file)
