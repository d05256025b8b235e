"""Skip Tuning: ComfyUI entry point.

ComfyUI imports this folder as a package and reads NODE_CLASS_MAPPINGS,
NODE_DISPLAY_NAME_MAPPINGS and WEB_DIRECTORY. The node modules import nothing from
ComfyUI at load time, so the repository also imports cleanly without it (tests, and
Automatic1111/Forge, which load scripts/ and never this file). Imported as a plain
module rather than a package, it registers nothing.

Module names are unique (``skip_tuning_*``): Forge keeps extension folders on
sys.path and ComfyUI has its own top-level ``nodes``.
"""

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
WEB_DIRECTORY = "./js"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]

if __package__:
    from . import skip_tuning_compare, skip_tuning_nodes, skip_tuning_residual

    for _module in (skip_tuning_nodes, skip_tuning_compare, skip_tuning_residual):
        NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
        NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
