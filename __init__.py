"""Skip Tuning: the entry point of ComfyUI's and InvokeAI's node loaders, which both import this folder as a
package (ComfyUI from ``custom_nodes/``, InvokeAI from ``ROOT/nodes/``). Everything else is the package
``skip_tuning/``: the host-free core and one folder per host.

ComfyUI serves WEB_DIRECTORY and calls ``comfy_entrypoint`` (its V3 extension entry; 0.3.64, the oldest
release tested, has it), which returns the nodes of ``skip_tuning.comfyui``. There are no V1
``NODE_CLASS_MAPPINGS``: ComfyUI reads those first and would then never call the entry point.

InvokeAI imports every folder in ``ROOT/nodes/`` after its own invocations, and a node registers when its
class is defined; so when InvokeAI's ``baseinvocation`` module is already loaded, this file imports
``skip_tuning.invokeai.nodes`` (the node "Denoise - SD1.5, SDXL + Skip Tuning"). ComfyUI never has that module
loaded and InvokeAI never calls ``comfy_entrypoint``: each loader gets its own nodes.

Only the entry points need their host, so the repository also imports cleanly without either (tests, and the
webuis, which load scripts/ and never this file). Imported as a plain module rather than a package, it imports
nothing.
"""

import sys

WEB_DIRECTORY = "./js"

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]

if __package__ and "invokeai.app.invocations.baseinvocation" in sys.modules:
    from .skip_tuning.invokeai import nodes as invokeai_nodes  # noqa: F401  (defining the node registers it)


async def comfy_entrypoint():
    """What ComfyUI calls when it loads the pack: the extension that lists the nodes."""
    from .skip_tuning.comfyui.nodes import SkipTuningExtension

    return SkipTuningExtension()
