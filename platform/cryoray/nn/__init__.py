"""Network building blocks shared by the methods."""

from .unet3d import UNet3D
from .unetpp import UNetPlusPlus3d

__all__ = ["UNet3D", "UNetPlusPlus3d"]
