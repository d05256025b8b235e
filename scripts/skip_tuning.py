"""Automatic1111 / Forge / reForge / SD.Next entry point of Skip Tuning.

The webui executes this file on every (re)load and registers each Script subclass found in its
namespace, so exactly one is exposed here. The implementation is the package's webui folder,
``skip_tuning/webui/`` (``script`` holds the Script class), imported from the extension root.
"""

import importlib
import os
import sys

_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _root not in sys.path:  # the webui puts it there while loading scripts; last, never shadowing others
    sys.path.append(_root)

_implementation = importlib.import_module("skip_tuning.webui.script")
_implementation.register_callbacks()

SkipTuningScript = _implementation.script_class()
