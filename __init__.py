"""Skip Tuning: the entry point of ComfyUI's and InvokeAI's node loaders, which both import this folder as a
package (ComfyUI from ``custom_nodes/``, InvokeAI from ``ROOT/nodes/``). Everything else is the package
``skip_tuning/``: the host-free core and one folder per host.

ComfyUI serves WEB_DIRECTORY and calls ``comfy_entrypoint`` (its V3 extension entry; 0.3.64, the oldest
release tested, has it), which returns the nodes of ``skip_tuning.comfyui``. There are no V1
``NODE_CLASS_MAPPINGS``: ComfyUI reads those first and would then never call the entry point.

Only the entry point needs ComfyUI, so the repository also imports cleanly without it (tests, and the webuis,
which load scripts/ and never this file). Imported as a plain module rather than a package, it imports nothing.
"""

WEB_DIRECTORY = "./js"

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]


async def comfy_entrypoint():
    """What ComfyUI calls when it loads the pack: the extension that lists the nodes."""
    from .skip_tuning.comfyui.nodes import SkipTuningExtension

    return SkipTuningExtension()
