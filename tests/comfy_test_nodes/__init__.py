"""Test-only ComfyUI nodes: a whole /prompt graph without any weights file.

Server tests put this folder into a temporary ComfyUI's custom_nodes next to the
extension. The models come from ``tests/comfy_helpers.py`` (tiny U-Nets of ComfyUI's
own classes with seeded weights). Never shipped to users: it lives under tests/.

Graph: SkipTuningTestTinyModel -> (Skip Tuning) -> KSampler <- SkipTuningTestConditioning,
EmptyLatentImage (64x64 gives the 8x8 latent the tiny models expect) -> SkipTuningTestLatentStats.
SkipTuningTestCallLog logs every model call to a file (the interrupt test counts them).
"""

import importlib.util
import os
import sys

_HELPERS_MODULE = "skip_tuning_test_comfy_helpers"


def _helpers():
    module = sys.modules.get(_HELPERS_MODULE)
    if module is None:
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "comfy_helpers.py")
        spec = importlib.util.spec_from_file_location(_HELPERS_MODULE, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[_HELPERS_MODULE] = module
        spec.loader.exec_module(module)
    return module


_CATEGORY = "_for_testing/skip_tuning"
_KINDS = ["sd1", "sdxl", "koala", "sdxs", "flux", "hunyuan_dit"]


class SkipTuningTestTinyModel:
    DESCRIPTION = "Test only: a tiny seeded model (sd1 = 12 skips, sdxl = 9, koala = 6, sdxs = 6 without a " \
                  "middle block, flux = no long skips, hunyuan_dit = a U-ViT with 19 skips)."
    CATEGORY = _CATEGORY
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "kind": (_KINDS, {"default": "sd1"}),
            "dtype": (["float32", "bfloat16", "float16"], {"default": "float32"}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1}),
        }}

    def load(self, kind, dtype, seed):
        import torch

        helpers = _helpers()
        if kind == "flux":
            return (helpers.build_tiny_flux(seed=seed),)
        if kind == "hunyuan_dit":
            return (helpers.build_tiny_hunyuan_dit(seed=seed, dtype=getattr(torch, dtype)),)
        return (helpers.build_tiny_unet(kind, dtype=getattr(torch, dtype), seed=seed),)


class SkipTuningTestConditioning:
    DESCRIPTION = "Test only: a seeded CONDITIONING that fits the tiny models (4 tokens x 32; HunyuanDiT also " \
                  "gets its mT5 tokens and masks)."
    CATEGORY = _CATEGORY
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 1, "min": 0, "max": 2**31 - 1})},
                "optional": {"for_model": (["unet", "hunyuan_dit"], {"default": "unet"})}}

    def make(self, seed, for_model="unet"):
        if for_model == "hunyuan_dit":
            return (_helpers().hunyuan_dit_conditioning(seed),)
        return (_helpers().tiny_conditioning(seed),)


class SkipTuningTestCallLog:
    DESCRIPTION = "Test only: the model, with a line appended to a file at every model call (the interrupt test " \
                  "counts them)."
    CATEGORY = _CATEGORY
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "wrap"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "path": ("STRING", {"default": ""})}}

    def wrap(self, model, path):
        def logged(apply_model, args):
            with open(path, "a") as log:
                log.write(f"{float(args['timestep'].reshape(-1)[0])}\n")
            return apply_model(args["input"], args["timestep"], **args["c"])

        logged_model = model.clone()
        logged_model.set_model_unet_function_wrapper(logged)
        return (logged_model,)


class SkipTuningTestLatentStats:
    DESCRIPTION = "Test only: an output node that reports the shape and statistics of a LATENT."
    CATEGORY = _CATEGORY
    RETURN_TYPES = ()
    FUNCTION = "report"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",)}}

    def report(self, samples):
        latent = samples["samples"].float()
        stats = {
            "shape": list(latent.shape),
            "mean": float(latent.mean()),
            "std": float(latent.std()),
            "finite": bool(latent.isfinite().all()),
            "values": [round(float(value), 6) for value in latent.flatten()[:16]],
        }
        return {"ui": {"skip_tuning_stats": [stats]}}


NODE_CLASS_MAPPINGS = {
    "SkipTuningTestTinyModel": SkipTuningTestTinyModel,
    "SkipTuningTestConditioning": SkipTuningTestConditioning,
    "SkipTuningTestLatentStats": SkipTuningTestLatentStats,
    "SkipTuningTestCallLog": SkipTuningTestCallLog,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "SkipTuningTestTinyModel": "Tiny Test Model (Skip Tuning tests)",
    "SkipTuningTestConditioning": "Tiny Test Conditioning (Skip Tuning tests)",
    "SkipTuningTestLatentStats": "Latent Stats (Skip Tuning tests)",
    "SkipTuningTestCallLog": "Model Call Log (Skip Tuning tests)",
}
