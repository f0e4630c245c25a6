"""Simulated data with exact ground truth: a built-in phantom and single-particle stacks."""

from cryoray.simulate.particles import SimulatedStack, simulate_particle_stack, write_particle_dataset
from cryoray.simulate.phantom import builtin_phantom

__all__ = ["SimulatedStack", "builtin_phantom", "simulate_particle_stack", "write_particle_dataset"]
