"""The reconstruction model and the simulator share one image-formation model, shifts and CTF included."""

import numpy as np
import torch
from cryoray.data.shards import PARTICLE_COLUMNS
from cryoray.methods.reconstruct import VoxelMap, predicted_images
from cryoray.physics import euler_relion_to_matrix
from cryoray.simulate import builtin_phantom, simulate_particle_stack


def test_the_true_map_reproduces_simulated_images_exactly():
    volume = builtin_phantom(24)
    stack = simulate_particle_stack(volume, 5.0, 16, ctf=True, max_shift_px=3.0, seed=11)
    table = stack.particles
    batch = {c: torch.tensor(table[c].to_numpy(), dtype=torch.float32) for c in PARTICLE_COLUMNS if c in table}
    batch["rotation"] = euler_relion_to_matrix(batch["rot_deg"], batch["tilt_deg"], batch["psi_deg"])
    model = VoxelMap(24)
    with torch.no_grad():
        model.density.copy_(torch.as_tensor(volume))
        predicted = predicted_images(model, batch, 5.0, with_ctf=True).numpy()
    assert np.abs(table[["shift_x_angstrom", "shift_y_angstrom"]].to_numpy()).max() > 5.0  # shifts are exercised
    np.testing.assert_allclose(predicted, stack.clean_images, atol=1e-4 * np.abs(stack.clean_images).max())
    wrong_sign = dict(batch, shift_x_angstrom=-batch["shift_x_angstrom"])
    with torch.no_grad():
        assert not np.allclose(predicted_images(model, wrong_sign, 5.0, True).numpy(), stack.clean_images, atol=1e-3)
