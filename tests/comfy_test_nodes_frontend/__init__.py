"""Test-only ComfyUI node for the Compare and front-end tests: a VAE without weights.

The browser/Compare tests install this folder into a temporary ComfyUI's custom_nodes
beside the extension and ``tests/comfy_test_nodes`` (the tiny models). Never shipped.
"""


class _TinyTestVAE:
    """Decodes a latent to RGB by a fixed map: channels 0-2, squashed to 0..1, 8x upscaled."""

    def decode(self, samples):
        import torch

        rgb = torch.sigmoid(samples[:, :3].float())
        rgb = torch.nn.functional.interpolate(rgb, scale_factor=8, mode="nearest")
        return rgb.movedim(1, -1).contiguous()


class SkipTuningTestVAE:
    DESCRIPTION = "Test only: a weightless VAE whose decode maps latent channels 0-2 to RGB (8x upscaled)."
    CATEGORY = "_for_testing/skip_tuning"
    RETURN_TYPES = ("VAE",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        return (_TinyTestVAE(),)


NODE_CLASS_MAPPINGS = {"SkipTuningTestVAE": SkipTuningTestVAE}
NODE_DISPLAY_NAME_MAPPINGS = {"SkipTuningTestVAE": "Tiny Test VAE (Skip Tuning tests)"}
