"""Stand-in of the webui's scripts/xyz_grid.py (loaded, like there, as a module named "xyz_grid.py").

Other extensions add axes by appending AxisOption(label, type, apply, ..., confirm, choices)
to ``axis_options``; each cell runs process_images on a shallow copy of p with the axis values
applied to the copy (so p-scoped overrides stay in their cell).
"""

import gradio as gr
import modules.scripts as scripts
from modules import processing


def apply_field(field):
    def apply(p, x, xs):
        setattr(p, field, x)

    return apply


def format_value_add_label(p, opt, x):
    return f"{opt.label}: {x}"


class AxisOption:
    def __init__(self, label, type, apply, format_value=format_value_add_label, confirm=None, cost=0.0,
                 choices=None, prepare=None):
        self.label, self.type, self.apply = label, type, apply
        self.format_value, self.confirm, self.cost = format_value, confirm, cost
        self.choices, self.prepare = choices, prepare


def do_nothing(p, x, xs):
    pass


axis_options = [
    AxisOption("Nothing", str, do_nothing),
    AxisOption("Seed", int, apply_field("seed")),
    AxisOption("Steps", int, apply_field("steps")),
    AxisOption("CFG Scale", float, apply_field("cfg_scale")),
]


class Script(scripts.Script):
    def title(self):
        return "X/Y/Z plot"

    def ui(self, is_img2img):
        self.current_axis_options = list(axis_options)  # like the webui: axes added later are not offered
        labels = [o.label for o in self.current_axis_options]
        x_type = gr.Dropdown(label="X type", choices=labels, value="Seed")
        x_values = gr.Textbox(label="X values", value="")
        y_type = gr.Dropdown(label="Y type", choices=labels, value="Nothing")
        y_values = gr.Textbox(label="Y values", value="")
        return [x_type, x_values, y_type, y_values]

    def run(self, p, x_type, x_values, y_type, y_values):
        def axis(label, text):
            option = next(o for o in self.current_axis_options if o.label == label)
            values = [option.type(v.strip()) for v in text.split(",")] if text.strip() else [None]
            if option.confirm:
                option.confirm(p, values)
            return option, values

        x_opt, xs = axis(x_type, x_values)
        y_opt, ys = axis(y_type, y_values)
        cells = []
        for y in ys:
            for x in xs:
                pc = processing.copy_for_cell(p)
                x_opt.apply(pc, x, xs)
                y_opt.apply(pc, y, ys)
                cells.append(((x, y), pc, processing.process_images(pc)))
        return cells
