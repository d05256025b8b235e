"""Automatic1111 / Forge / reForge / SD.Next entry point of Skip Tuning.

The webui executes this file on every (re)load and registers each Script subclass found in its
namespace, so exactly one is exposed here. The implementation lives in ../sd_webui_script.py (and
the per-host modules it imports from ../skip_tuning_webui/), imported under a name no other
extension uses (Forge keeps every extension folder on sys.path).
"""

import importlib.util
import os
import sys


def _load_implementation():
    name = "skip_tuning_sd_webui_script"
    module = sys.modules.get(name)
    if module is not None:
        return module
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:  # the webui puts it there while loading scripts; last, never shadowing others
        sys.path.append(root)
    spec = importlib.util.spec_from_file_location(name, os.path.join(root, "sd_webui_script.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


_implementation = _load_implementation()
_implementation.register_callbacks()

SkipTuningScript = _implementation.script_class()
