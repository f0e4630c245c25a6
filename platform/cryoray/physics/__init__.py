"""Imaging physics and metrics for cryo-EM/ET: pure, differentiable, batched torch.

No Ray, MLflow or file I/O lives here. The conventions below hold for every module.

Arrays
    Volumes are indexed ``(z, y, x)`` and images ``(y, x)``, as ``mrcfile`` returns them; x is the
    last axis. Leading dims are batch dims. Coordinate VECTORS are written ``(x, y, z)``.

Origin
    The image/volume origin and the Fourier origin both sit at index ``D//2`` on every axis
    (centred: ``fftshift ∘ fft ∘ ifftshift``). Voxel ``(iz, iy, ix)`` has coordinates
    ``(ix, iy, iz) - D//2`` and frequency ``((ix, iy, iz) - D//2) / D`` cycles/pixel. FFTs default
    to ``norm="ortho"``. The Hartley transform is ``Re F - Im F`` of the centred FFT.

Rotations
    Matrices act on column vectors. A pose ``R`` maps particle (volume) coordinates into the
    lab/image frame, so the projection is ``P(x, y) = ∫ V(Rᵀ (x, y, z)ᵀ) dz`` and its Fourier slice
    is ``P̂(kx, ky) = V̂(Rᵀ (kx, ky, 0)ᵀ)``. Euler angles are RELION's ZYZ ``(rot, tilt, psi)`` in
    degrees, turned into the matrix RELION's ``Euler_angles2matrix`` builds
    (``Rz(-psi) Ry(-tilt) Rz(-rot)``), which maps reference coordinates to image coordinates, i.e.
    it is the pose. Quaternions are ``(w, x, y, z)`` (Hamilton), canonical ``w >= 0``. cryoDRGN's
    pose matrices are poses in this convention as they are (see ``projection``).

In-plane shifts
    ``shifts_px = (sx, sy)`` in pixels, x first; positive moves the content towards +x / +y.

Units
    Every physical quantity carries its unit in its name (``pixel_size_angstrom``,
    ``defocus_u_angstrom``, ``cs_mm``, ``voltage_kv``); spatial frequency is in cycles/pixel unless
    a pixel size is given (then 1/Å). The CTF sign convention is in ``ctf``.
"""

from .ctf import apply_ctf, compute_ctf, ctf_2d, electron_wavelength_angstrom, validate_ctf_parameters
from .fourier import (
    centered_grid,
    fft2_centered,
    fft3_centered,
    fourier_to_hartley,
    frequency_grid,
    hartley_to_fourier,
    ht2_centered,
    ht3_centered,
    ifft2_centered,
    ifft3_centered,
    iht2_centered,
    iht3_centered,
    negate_frequencies,
    radial_frequency_grid,
)
from .hopf import (
    healpix_pix2ang_nested,
    hopf_children,
    hopf_grid_quaternions,
    hopf_grid_resolution_deg,
    hopf_grid_rotations,
    hopf_grid_rotations_at,
    hopf_grid_size,
    hopf_to_quaternion,
    nearest_hopf_neighbours,
)
from .image_formation import CTF_PARAMETERS, form_particle_images, reconstruct_fourier_inversion
from .masks import sphere_mask
from .metrics import (
    fourier_shell_correlation,
    fsc_resolution_angstrom,
    mean_shell_correlation,
    psnr,
    rotation_error_after_alignment,
    ssim,
)
from .noise import add_gaussian_noise, snr_db_to_linear, snr_linear_to_db
from .normalize import STD_FLOOR, standardize
from .projection import (
    insert_central_slices,
    project_fourier_slice,
    project_real_space,
    sample_central_slices,
    shift_images,
    shift_images_fourier,
    slice_volume_fourier,
)
from .rotations import (
    axis_angle_to_matrix,
    euler_relion_to_matrix,
    geodesic_distance_deg,
    matrix_to_axis_angle,
    matrix_to_euler_relion,
    matrix_to_quaternion,
    matrix_to_s2s2,
    quaternion_distance,
    quaternion_to_matrix,
    random_quaternions,
    random_rotations,
    s2s2_to_matrix,
    standardize_quaternion,
)
from .wedge import (
    apply_fourier_mask,
    cube_rotations,
    missing_wedge_mask,
    missing_wedge_region,
    rotate_volume_90,
    wedge_changing_rotations,
)

__all__ = [
    "CTF_PARAMETERS",
    "STD_FLOOR",
    "form_particle_images",
    "reconstruct_fourier_inversion",
    "insert_central_slices",
    "add_gaussian_noise",
    "apply_ctf",
    "apply_fourier_mask",
    "axis_angle_to_matrix",
    "centered_grid",
    "compute_ctf",
    "ctf_2d",
    "cube_rotations",
    "electron_wavelength_angstrom",
    "euler_relion_to_matrix",
    "fft2_centered",
    "fft3_centered",
    "fourier_shell_correlation",
    "fourier_to_hartley",
    "frequency_grid",
    "fsc_resolution_angstrom",
    "geodesic_distance_deg",
    "hartley_to_fourier",
    "healpix_pix2ang_nested",
    "hopf_children",
    "hopf_grid_quaternions",
    "hopf_grid_resolution_deg",
    "hopf_grid_rotations",
    "hopf_grid_rotations_at",
    "hopf_grid_size",
    "hopf_to_quaternion",
    "ht2_centered",
    "ht3_centered",
    "ifft2_centered",
    "ifft3_centered",
    "iht2_centered",
    "iht3_centered",
    "matrix_to_axis_angle",
    "matrix_to_euler_relion",
    "matrix_to_quaternion",
    "matrix_to_s2s2",
    "mean_shell_correlation",
    "missing_wedge_mask",
    "missing_wedge_region",
    "nearest_hopf_neighbours",
    "negate_frequencies",
    "project_fourier_slice",
    "project_real_space",
    "psnr",
    "quaternion_distance",
    "quaternion_to_matrix",
    "radial_frequency_grid",
    "random_quaternions",
    "random_rotations",
    "rotate_volume_90",
    "rotation_error_after_alignment",
    "sample_central_slices",
    "s2s2_to_matrix",
    "shift_images",
    "shift_images_fourier",
    "slice_volume_fourier",
    "snr_db_to_linear",
    "snr_linear_to_db",
    "sphere_mask",
    "ssim",
    "standardize",
    "standardize_quaternion",
    "validate_ctf_parameters",
    "wedge_changing_rotations",
]
