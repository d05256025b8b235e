"""Stand-in of SD.Next's modules.script_callbacks: what Skip Tuning registers."""

callbacks_before_ui: list = []
callbacks_infotext_pasted: list = []
callbacks_before_process: list = []
callbacks_after_process: list = []


def clear_callbacks():
    for callbacks in (callbacks_before_ui, callbacks_infotext_pasted, callbacks_before_process,
                      callbacks_after_process):
        callbacks.clear()


def on_before_ui(callback):
    callbacks_before_ui.append(callback)


def on_infotext_pasted(callback):
    callbacks_infotext_pasted.append(callback)


def on_before_process(callback):
    callbacks_before_process.append(callback)


def on_after_process(callback):
    callbacks_after_process.append(callback)


def before_process_callback(p):
    for callback in callbacks_before_process:
        callback(p)


def after_process_callback(p):
    for callback in callbacks_after_process:
        callback(p)
