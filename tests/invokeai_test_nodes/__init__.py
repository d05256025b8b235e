"""A test-only InvokeAI node pack (installed by tests/test_invokeai_real.py next to the Skip Tuning pack).

``skip_tuning_test_denoise_path`` passes its noise through unchanged and sets or clears ``USE_MODULAR_DENOISE`` in
the server process, which the core denoise node reads at every invoke: wired between the noise and a denoise
node, it picks the denoise path of that run, so one server tests both.
"""

import os

from invokeai.invocation_api import (
    BaseInvocation,
    InputField,
    InvocationContext,
    LatentsField,
    LatentsOutput,
    invocation,
)


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
