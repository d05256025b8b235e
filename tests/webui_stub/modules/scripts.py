"""Stand-in of modules.scripts: the Script base, script loading and the runner for alwayson scripts.

Follows A1111 1.10: script files are executed as modules named after their file name (not put in
sys.modules); every Script subclass in a file's namespace is registered; alwayson scripts get
the slice ``p.script_args[args_from:args_to]`` (their ui() components, in order); exceptions
raised by a script's callbacks are reported and swallowed; the API builds default args from
the components' values.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
from collections import namedtuple

from modules import script_callbacks

AlwaysVisible = object()
ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
scripts_data: list = []
reported_errors: list = []  # (script title, method name, exception), like errors.report


class Script:
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    infotext_fields = None
    paste_field_names = None

    def title(self):
        raise NotImplementedError

    def show(self, is_img2img):
        return True

    def ui(self, is_img2img):
        pass

    def run(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def before_hr(self, p, *args):
        pass

    def process_before_every_sampling(self, p, *args, **kwargs):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def elem_id(self, item_id):
        shown_on_both_tabs = self.show(True) == self.show(False)
        tab = ("img2img_" if self.is_img2img else "txt2img_") if shown_on_both_tabs else ""
        title = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", self.title().lower()))
        return f"script_{tab}{title}_{item_id}"


def load_script_file(path: str):
    """Execute one scripts/*.py file the way the webui does and register its Script classes."""
    spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for value in list(module.__dict__.values()):
        if inspect.isclass(value) and issubclass(value, Script):
            scripts_data.append(ScriptClassData(value, path, os.path.dirname(os.path.dirname(path)), module))
    return module


def load_scripts(paths):
    """Reload everything: clear the registry and the callbacks, then load each file."""
    scripts_data.clear()
    script_callbacks.clear_callbacks()
    return [load_script_file(path) for path in paths]


class ScriptRunner:
    def __init__(self, is_img2img: bool = False):
        self.is_img2img = is_img2img
        self.scripts = []
        self.alwayson_scripts = []
        self.selectable_scripts = []
        self.inputs = [None]  # slot 0: the selected script's index
        self.infotext_fields = []
        self.paste_field_names = []
        for data in scripts_data:
            script = data.script_class()
            script.filename = data.path
            script.is_img2img = is_img2img
            script.is_txt2img = not is_img2img
            visibility = script.show(is_img2img)
            if visibility is AlwaysVisible:
                script.alwayson = True
                self.alwayson_scripts.append(script)
            elif visibility:
                self.selectable_scripts.append(script)
            else:
                continue
            self.scripts.append(script)

    def setup_ui(self):
        """Create every script's controls (alwayson first) and collect the paste fields."""
        for script in self.alwayson_scripts + self.selectable_scripts:
            script.args_from = len(self.inputs)
            controls = script.ui(script.is_img2img) or []
            self.inputs.extend(controls)
            script.args_to = len(self.inputs)
            self.infotext_fields.extend(script.infotext_fields or [])
            self.paste_field_names.extend(script.paste_field_names or [])
        return self.inputs

    def script(self, title: str):
        return next(s for s in self.scripts if s.title().lower() == title.lower())

    def default_args(self):
        """What the API starts from: every control's value (it calls ui() again for that)."""
        args = [0] + [None] * (len(self.inputs) - 1)
        for script in self.alwayson_scripts + self.selectable_scripts:
            controls = script.ui(script.is_img2img) or []
            args[script.args_from:script.args_to] = [control.value for control in controls]
        return args

    def api_args(self, alwayson_scripts: dict):
        """init_script_args of the API: {title: {"args": [...]}} copied over the defaults, positionally."""
        args = self.default_args()
        for title, entry in alwayson_scripts.items():
            script = self.script(title)
            given = entry.get("args", [])
            for index in range(min(script.args_to - script.args_from, len(given))):
                args[script.args_from + index] = given[index]
        return args

    def _call(self, method: str, p, *extra, **kwargs):
        for script in self.alwayson_scripts:
            args = p.script_args[script.args_from:script.args_to]
            try:
                getattr(script, method)(p, *extra, *args, **kwargs)
            except Exception as error:  # the webui reports and goes on
                reported_errors.append((script.title(), method, error))

    def process(self, p):
        self._call("process", p)

    def process_batch(self, p, **kwargs):
        self._call("process_batch", p, **kwargs)

    def before_hr(self, p):
        self._call("before_hr", p)

    def process_before_every_sampling(self, p, **kwargs):  # A1111 1.10+ (tests delete it to act as 1.9)
        self._call("process_before_every_sampling", p, **kwargs)

    def postprocess_batch(self, p, images, **kwargs):
        self._call("postprocess_batch", p, images=images, **kwargs)

    def postprocess(self, p, processed):
        self._call("postprocess", p, processed)

    def run(self, p, *args):
        """The selected (non-alwayson) script, e.g. the X/Y/Z plot."""
        index = args[0]
        if not index:
            return None
        script = self.selectable_scripts[index - 1]
        return script.run(p, *args[script.args_from:script.args_to])
