"""Demo model (class-conditional Fashion-MNIST latent diffusion) for Skip-Tuning experiments.

Not imported by the extension; needs torch, safetensors, numpy and (for the
UNet) ``stable-diffusion-sdkit``'s ``ldm`` package, plus ``diffusers`` for
sampling and ``scipy`` for the metrics.
"""
