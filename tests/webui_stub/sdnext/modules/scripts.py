"""Stand-in of SD.Next's modules.scripts (a re-export of scripts_manager): the Script base without
process_before_every_sampling, script loading, and the runner of alwayson scripts (args from
``p.per_script_args`` when the API set them, else ``p.script_args``; exceptions are reported and swallowed)."""

from __future__ import annotations

import importlib.util
import inspect
import os
from collections import namedtuple

from modules import script_callbacks

AlwaysVisible = object()
ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
scripts_data: list = []
reported_errors: list = []


class Script:
    args_from = 0
    args_to = 0
    alwayson = False

    def title(self):
        raise NotImplementedError

    def show(self, is_img2img):
        return True

    def process(self, p, *args):
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess(self, p, processed, *args):
        pass


def load_scripts(paths):
    scripts_data.clear()
    script_callbacks.clear_callbacks()
    for path in paths:
        spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for value in list(module.__dict__.values()):
            if inspect.isclass(value) and issubclass(value, Script):
                scripts_data.append(ScriptClassData(value, path, os.path.dirname(os.path.dirname(path)), module))


class ScriptRunner:
    def __init__(self, n_args: int):
        self.alwayson_scripts = []
        for data in scripts_data:
            script = data.script_class()
            if script.show(False) is AlwaysVisible:
                script.alwayson = True
                script.args_from, script.args_to = 1, 1 + n_args
                self.alwayson_scripts.append(script)

    def _call(self, method: str, p, *extra, **kwargs):
        for script in self.alwayson_scripts:
            args = p.per_script_args.get(script.title(), p.script_args[script.args_from:script.args_to])
            try:
                getattr(script, method)(p, *extra, *args, **kwargs)
            except Exception as error:
                reported_errors.append((script.title(), method, error))

    def process(self, p):
        self._call("process", p)

    def process_batch(self, p, **kwargs):
        self._call("process_batch", p, **kwargs)

    def postprocess_batch(self, p, images, **kwargs):
        self._call("postprocess_batch", p, images=images, **kwargs)

    def postprocess(self, p, processed):
        self._call("postprocess", p, processed)
