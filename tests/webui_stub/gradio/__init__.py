"""Fake gradio for the webui stand-in: components remember their arguments and their parent block."""

from __future__ import annotations

_stack: list = []
created: list = []  # every block created, in order


class Block:
    def __init__(self, *args, **kwargs):
        self.args = args
        self.kwargs = kwargs
        self.elem_id = kwargs.get("elem_id")
        self.label = kwargs.get("label")
        self.visible = kwargs.get("visible", True)
        self.parent = _stack[-1] if _stack else None
        self.children = []
        if self.parent is not None:
            self.parent.children.append(self)
        created.append(self)

    def __enter__(self):
        _stack.append(self)
        return self

    def __exit__(self, *exc_info):
        _stack.pop()

    def ancestors(self):
        block = self.parent
        while block is not None:
            yield block
            block = block.parent


class Component(Block):
    def __init__(self, *args, value=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.value = value


class Slider(Component):
    def __init__(self, minimum=0, maximum=100, value=None, step=None, **kwargs):
        super().__init__(value=minimum if value is None else value, **kwargs)
        self.minimum, self.maximum, self.step = minimum, maximum, step


class Checkbox(Component):
    def __init__(self, value=False, **kwargs):
        super().__init__(value=value, **kwargs)


class Radio(Component):
    def __init__(self, choices=None, value=None, **kwargs):
        super().__init__(value=value, **kwargs)
        self.choices = list(choices or [])


class Dropdown(Radio):
    pass


class Textbox(Component):
    pass


class Accordion(Block):
    def __init__(self, label=None, open=True, **kwargs):
        super().__init__(label=label, **kwargs)
        self.open = open


class Row(Block):
    pass


class Column(Block):
    pass


class Group(Block):
    pass


class Blocks(Block):
    pass


def update(**kwargs):
    return {"__type__": "update", **kwargs}
