"""A test-only InvokeAI node pack (installed by tests/test_invokeai_real.py next to the Skip Tuning pack).

``skip_tuning_test_denoise_path`` passes its noise through unchanged and sets or clears ``USE_MODULAR_DENOISE`` in
the server process, which the core denoise node reads at every invoke: wired between the noise and a denoise
node, it picks the denoise path of that run, so one server tests both.

``skip_tuning_test_latents_digest`` reports what decoded images cannot show (the VAE's attention mixes every
latent into every pixel): a hash of the latents inside and outside a denoise mask, so that the region an inpaint
keeps can be compared exactly between runs and with the latents it started from.
"""

import hashlib
import json
import os

import torchvision.transforms as T
from invokeai.invocation_api import (
    BaseInvocation,
    DenoiseMaskField,
    InputField,
    InvocationContext,
    LatentsField,
    LatentsOutput,
    StringOutput,
    invocation,
)
from torchvision.transforms.functional import resize


@invocation("skip_tuning_test_denoise_path", title="Test: denoise path", category="latents", version="1.0.0",
            use_cache=False)
class DenoisePathInvocation(BaseInvocation):
    """Test only: sets the denoise path for the denoise node this noise goes to."""

    noise: LatentsField = InputField(description="noise, passed through")
    modular: bool = InputField(default=False, description="USE_MODULAR_DENOISE on (True) or off")

    def invoke(self, context: InvocationContext) -> LatentsOutput:
        if self.modular:
            os.environ["USE_MODULAR_DENOISE"] = "1"
        else:
            os.environ.pop("USE_MODULAR_DENOISE", None)
        context.logger.info(f"Test: denoise path {'modular' if self.modular else 'default'}")
        latents = context.tensors.load(self.noise.latents_name)
        return LatentsOutput.build(latents_name=self.noise.latents_name, latents=latents, seed=self.noise.seed)


@invocation("skip_tuning_test_latents_digest", title="Test: latents digest", category="latents", version="1.0.0",
            use_cache=False)
class LatentsDigestInvocation(BaseInvocation):
    """Test only: hashes of the latents where the denoise mask is at least 0.5 and where it is below."""

    latents: LatentsField = InputField(description="the latents to hash")
    mask: DenoiseMaskField = InputField(description="the denoise mask that splits them")

    def invoke(self, context: InvocationContext) -> StringOutput:
        latents = context.tensors.load(self.latents.latents_name)
        mask = context.tensors.load(self.mask.mask_name)
        # Resized as the denoise node resizes it (DenoiseLatentsInvocation.prep_inpaint_mask).
        mask = resize(mask, latents.shape[-2:], T.InterpolationMode.BILINEAR, antialias=False) >= 0.5
        mask = mask.expand_as(latents)

        def digest(region):
            return hashlib.sha256(latents[region].contiguous().numpy().tobytes()).hexdigest()

        return StringOutput(value=json.dumps({"high": digest(mask), "low": digest(~mask),
                                              "high_count": int(mask.sum()), "low_count": int((~mask).sum())}))
