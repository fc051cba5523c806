from medgen.networks.unet import ConditionalDiffusionUNet

__all__ = ["ConditionalDiffusionUNet"]
