"""Stand-in of modules.infotext_utils: parse an infotext and paste it into controls, as A1111 1.10 does.

parse: the "key: value" pairs of the last line (quoted values unquoted); paste: run the
infotext-pasted callbacks on the parsed dict, then give each (component, key) its value - a
callable key is called with the dict, None leaves the control as it is, text is converted to
the type of the control's current value ("False" -> False for checkboxes). ``send_to``: what
"Send to img2img" does between tabs - it copies the values of the controls whose key is listed
in the scripts' paste_field_names.
"""

from __future__ import annotations

import json
import re

from modules import script_callbacks

re_param = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_generation_parameters(text: str) -> dict:
    *lines, last = text.strip().split("\n")
    params = {"Prompt": "\n".join(lines)}
    for key, value in re_param.findall(last):
        value = value.strip()
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            value = json.loads(value)
        params[key] = value
    return params


def paste(fields, text: str) -> list:
    """The value each control gets (None = unchanged), in the order of ``fields``."""
    params = parse_generation_parameters(text)
    script_callbacks.infotext_pasted_callback(text, params)
    result = []
    for component, key in fields:
        value = key(params) if callable(key) else params.get(key)
        if value is None or isinstance(value, dict):
            result.append(value)
            continue
        kind = type(component.value)
        if kind is bool and value == "False":
            result.append(False)
        elif kind is int:
            result.append(float(value))
        else:
            result.append(kind(value))
    return result


def send_to(source_fields, target_fields, paste_field_names, source_values: dict) -> dict:
    """Copy control values between tabs: {target component: value} for the listed keys."""
    names = ["Prompt", "Negative prompt", "Steps", "Face restoration"] + list(paste_field_names)
    inputs = [component for component, name in source_fields if name in names]
    outputs = [component for component, name in target_fields if name in names]
    assert len(inputs) == len(outputs), "the tabs' paste fields do not line up"
    return {target: source_values[source] for source, target in zip(inputs, outputs)}
