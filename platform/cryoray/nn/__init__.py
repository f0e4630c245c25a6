"""Network building blocks shared by the methods."""

from .unet3d import UNet3D

__all__ = ["UNet3D"]
