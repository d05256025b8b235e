"""Stand-in of modules.ui_components.InputAccordion: a checkbox that is also an accordion."""

import gradio as gr


class InputAccordion(gr.Checkbox):
    def __init__(self, value, **kwargs):
        super().__init__(value=value, **kwargs)
        self.accordion = self  # controls created inside the ``with`` block belong to it
