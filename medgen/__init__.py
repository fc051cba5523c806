"""medgen: class-conditional diffusion models for medical images, built on MONAI."""

__version__ = "0.1.0"
