"""Helpers shared by the benchmark scripts (not part of the extension)."""

from __future__ import annotations

import os
import platform
import sys
import weakref

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402

from skip_tuning_demo import comfy_import  # noqa: E402


def set_threads(threads: int) -> int:
    """Pin torch's intra-op threads (and one inter-op thread) so timings are comparable."""
    if threads and threads > 0:
        torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process
        pass
    return torch.get_num_threads()


def import_comfy() -> bool:
    """Put ComfyUI on sys.path (CPU, no argument parsing); True when its modules import."""
    try:
        if not comfy_import.import_comfy(required=False):
            return False
        from comfy.ldm.modules.diffusionmodules import openaimodel  # noqa: F401
    except Exception as exc:  # a broken checkout: report and carry on without it
        print(f"[benchmarks] ComfyUI at {comfy_import.comfyui_path()} does not import "
              f"({type(exc).__name__}: {exc}); skipping it")
        return False
    return True


def comfyui_version() -> str:
    try:
        import comfyui_version  # type: ignore

        return str(comfyui_version.__version__)
    except Exception:
        return "unknown"


def machine_summary() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of tensor storage created (and still alive) while the mode is active.

    Tracks every storage an operator returns until it is freed; weights and inputs made
    before entering do not count, so ``peak`` is the activation high-water mark of the call.
    """

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            size = storage.nbytes()
            if size == 0 or key in self._sizes:
                continue
            self._sizes[key] = size
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._release, key)
        return out

    def _release(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)


def fill_random_(module: torch.nn.Module, seed: int = 0) -> None:
    """Fan-in-scaled uniform weights, zero biases, unit norms: finite activations, no denormals."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim >= 2:
                bound = 1.0 / max(1, param[0].numel()) ** 0.5
                param.uniform_(-bound, bound, generator=gen)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.fill_(1.0)


def save_samples(path: str, **arrays) -> None:
    """One configuration's sample file (.npz), written whole or not at all: an interrupted run must not
    leave a truncated file that a resumed run would take as done."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)
