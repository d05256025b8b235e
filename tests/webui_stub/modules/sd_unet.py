"""Stand-in of modules.sd_unet: an active SdUnet (TensorRT and the like) replaces the U-Net's forward."""

current_unet = None
