"""Stand-in of modules.script_callbacks: the two callbacks Skip Tuning registers."""

callbacks_before_ui: list = []
callbacks_infotext_pasted: list = []


def clear_callbacks():
    """The webui does this before (re)loading scripts."""
    callbacks_before_ui.clear()
    callbacks_infotext_pasted.clear()


def on_before_ui(callback):
    callbacks_before_ui.append(callback)


def on_infotext_pasted(callback):
    callbacks_infotext_pasted.append(callback)


def before_ui_callback():
    for callback in callbacks_before_ui:
        callback()


def infotext_pasted_callback(infotext, params):
    for callback in callbacks_infotext_pasted:
        callback(infotext, params)
