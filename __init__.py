"""Skip Tuning: ComfyUI entry point.

ComfyUI imports this folder as a package, serves WEB_DIRECTORY and calls ``comfy_entrypoint``
(its V3 extension entry; 0.3.64, the oldest release tested, has it), which returns the four nodes
(``skip_tuning_comfy_nodes``, V3 schema). There are no V1 ``NODE_CLASS_MAPPINGS``: ComfyUI
reads those first and would then never call the entry point.

Only the entry point needs ComfyUI, so the repository also imports cleanly without it (tests,
and Automatic1111/Forge, which load scripts/ and never this file). Imported as a plain module
rather than a package, it imports nothing.

Module names are unique (``skip_tuning_*``): Forge keeps extension folders on sys.path and
ComfyUI has its own top-level ``nodes``.
"""

WEB_DIRECTORY = "./js"

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]

if __package__:
    # The host-free adapters behind the nodes (the tests and benchmarks call them as pack.<module>).
    from . import skip_tuning_compare, skip_tuning_nodes, skip_tuning_residual  # noqa: F401


async def comfy_entrypoint():
    """What ComfyUI calls when it loads the pack: the extension that lists the nodes."""
    from .skip_tuning_comfy_nodes import SkipTuningExtension

    return SkipTuningExtension()
