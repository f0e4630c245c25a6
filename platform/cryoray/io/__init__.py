"""Reading and writing what users bring and what cryoray produces: MRC, STAR, atomic models; all validated."""

from cryoray.io.atomic import atomic_model_to_density
from cryoray.io.mrc import MrcData, MrcStack, open_stack_mmap, read_mrc, read_mrc_shape, write_mrc
from cryoray.io.star import (
    ParticleTable,
    read_coordinates,
    read_particles_star,
    write_coordinates,
    write_particles_star,
)
from cryoray.io.validate import check_can_write, check_finite, check_positive

__all__ = [
    "MrcData",
    "MrcStack",
    "ParticleTable",
    "atomic_model_to_density",
    "check_can_write",
    "check_finite",
    "check_positive",
    "open_stack_mmap",
    "read_coordinates",
    "read_mrc",
    "read_mrc_shape",
    "read_particles_star",
    "write_coordinates",
    "write_mrc",
    "write_particles_star",
]
