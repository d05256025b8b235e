"""Finding and importing a ComfyUI source tree for the demo models built from ComfyUI's classes.

Looked for at $COMFYUI_PATH, else ~/ComfyUI, else ``shared/ComfyUI`` beside the repository
(the layout the project's CI provides). Imported for the CPU, without parsing sys.argv.
"""

from __future__ import annotations

import os
import sys

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def comfyui_candidates() -> list[str]:
    configured = os.environ.get("COMFYUI_PATH")
    if configured:
        return [os.path.expanduser(configured)]
    return [
        os.path.join(os.path.expanduser("~"), "ComfyUI"),
        os.path.join(os.path.dirname(_REPO_ROOT), "shared", "ComfyUI"),
    ]


def comfyui_path() -> str | None:
    """The first candidate that is a ComfyUI source tree, or None."""
    for path in comfyui_candidates():
        if os.path.isfile(os.path.join(path, "main.py")) and os.path.isfile(
            os.path.join(path, "comfy", "model_management.py")
        ):
            return os.path.realpath(path)
    return None


def import_comfy(required: bool = True) -> bool:
    """Put ComfyUI on sys.path and import its model code (CPU); False (or raise) when there is none."""
    path = comfyui_path()
    if path is None:
        if required:
            raise RuntimeError(
                "no ComfyUI source tree found at " + " or ".join(comfyui_candidates()) + " (set COMFYUI_PATH)"
            )
        return False
    if path not in sys.path:
        sys.path.insert(0, path)
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # a CUDA build of torch without a GPU must not probe CUDA
    # torch's SDPA, what ComfyUI picks on GPUs; on the CPU it would fall back to a slower chunked attention.
    comfy.cli_args.args.use_pytorch_cross_attention = True
    import comfy.model_management  # noqa: F401
    import comfy.ops  # noqa: F401

    return True
