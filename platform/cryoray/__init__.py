"""cryoray: train cryo-EM and cryo-ET deep-learning methods at scale on Ray."""

__version__ = "0.1.0"
