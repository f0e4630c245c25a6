"""Rotation representations, conversions and distances (batched over leading dims).

Matrices act on column vectors ``(x, y, z)``. A pose ``R`` maps particle coordinates into the
lab/image frame. Quaternions are ``(w, x, y, z)`` with the Hamilton product, and conversions to a
quaternion return the canonical sign ``w >= 0``.
"""

from __future__ import annotations

import torch

__all__ = [
    "s2s2_to_matrix",
    "matrix_to_s2s2",
    "quaternion_to_matrix",
    "matrix_to_quaternion",
    "standardize_quaternion",
    "axis_angle_to_matrix",
    "matrix_to_axis_angle",
    "euler_relion_to_matrix",
    "matrix_to_euler_relion",
    "random_rotations",
    "random_quaternions",
    "geodesic_distance_deg",
    "quaternion_distance",
]


def _check_last(x: torch.Tensor, size: int, name: str, what: str) -> None:
    if x.ndim < 1 or x.shape[-1] != size:
        raise ValueError(f"{name}: expected {what} with last dim {size}, got shape {tuple(x.shape)}")


def _check_matrix(R: torch.Tensor, name: str) -> None:
    if R.ndim < 2 or tuple(R.shape[-2:]) != (3, 3):
        raise ValueError(f"{name}: expected rotation matrices of shape (..., 3, 3), got shape {tuple(R.shape)}")


def s2s2_to_matrix(x6: torch.Tensor) -> torch.Tensor:
    """Rotation from two 3-vectors (the 6D / S2S2 representation) by Gram–Schmidt.

    ``b1 = a1/|a1|``, ``b2 = normalize(a2 - (b1·a2) b1)``, ``b3 = b1 × b2``, stacked as the ROWS of
    the matrix (PyTorch3D ``rotation_6d_to_matrix``, cryoDRGN ``s2s2_to_SO3``, hence cryoAI/cryoSPIN).
    Rows rather than columns is a convention only; :func:`matrix_to_s2s2` inverts it.
    """
    _check_last(x6, 6, "s2s2_to_matrix", "a tensor")
    a1, a2 = x6[..., :3], x6[..., 3:]
    b1 = torch.nn.functional.normalize(a1, dim=-1)
    b2 = torch.nn.functional.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack((b1, b2, b3), dim=-2)


def matrix_to_s2s2(R: torch.Tensor) -> torch.Tensor:
    """The first two rows of ``R`` concatenated, shape (..., 6); inverse of :func:`s2s2_to_matrix`."""
    _check_matrix(R, "matrix_to_s2s2")
    return R[..., :2, :].reshape(*R.shape[:-2], 6)


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrix of a (normalised here) Hamilton quaternion ``(w, x, y, z)``; ``q`` and ``-q`` agree."""
    _check_last(q, 4, "quaternion_to_matrix", "quaternions")
    w, x, y, z = torch.nn.functional.normalize(q, dim=-1).unbind(-1)
    rows = (
        (1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)),
        (2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)),
        (2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)),
    )
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def standardize_quaternion(q: torch.Tensor) -> torch.Tensor:
    """Pick the representative with ``w >= 0`` (``q`` and ``-q`` are the same rotation)."""
    _check_last(q, 4, "standardize_quaternion", "quaternions")
    return torch.where(q[..., :1] < 0, -q, q)


def matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """Unit quaternion ``(w, x, y, z)`` with ``w >= 0`` of a rotation matrix.

    Numerically stable: of the four algebraically equal formulas, the one dividing by the largest
    of ``|w|, |x|, |y|, |z|`` is used. The square roots are clamped so that the unused branches
    give finite (zero) gradients.
    """
    _check_matrix(R, "matrix_to_quaternion")
    m = R.unbind(-1)
    m00, m10, m20 = m[0].unbind(-1)
    m01, m11, m21 = m[1].unbind(-1)
    m02, m12, m22 = m[2].unbind(-1)
    four_sq = torch.stack((1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22), dim=-1)
    s = torch.sqrt(four_sq.clamp_min(1e-12))  # s = 2|w|, 2|x|, 2|y|, 2|z|
    candidates = torch.stack(
        (
            torch.stack((s[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01), dim=-1),
            torch.stack((m21 - m12, s[..., 1] ** 2, m01 + m10, m02 + m20), dim=-1),
            torch.stack((m02 - m20, m01 + m10, s[..., 2] ** 2, m12 + m21), dim=-1),
            torch.stack((m10 - m01, m02 + m20, m12 + m21, s[..., 3] ** 2), dim=-1),
        ),
        dim=-2,
    ) / (2 * s[..., :, None])
    best = four_sq.argmax(dim=-1)
    index = best[..., None, None].expand(*best.shape, 1, 4)
    q = torch.gather(candidates, -2, index).squeeze(-2)
    return standardize_quaternion(torch.nn.functional.normalize(q, dim=-1))


def _hat(omega: torch.Tensor) -> torch.Tensor:
    x, y, z = omega.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack((torch.stack((zero, -z, y), -1), torch.stack((z, zero, -x), -1), torch.stack((-y, x, zero), -1)), dim=-2)


def axis_angle_to_matrix(omega: torch.Tensor) -> torch.Tensor:
    """Exponential map: rotation by ``|omega|`` radians about ``omega/|omega|`` (Rodrigues).

    ``R = I + a K + b K²`` with ``K = hat(omega)``, ``a = sin θ/θ``, ``b = (1 - cos θ)/θ²``. Below
    ``θ² < 1e-4`` the coefficients come from their Taylor series in ``θ²``, so the value and the
    gradient are finite and exact at ``omega = 0`` (no ``|omega|`` is ever differentiated there).
    """
    _check_last(omega, 3, "axis_angle_to_matrix", "axis-angle vectors")
    theta2 = (omega * omega).sum(-1)
    small = theta2 < 1e-4
    safe_theta2 = torch.where(small, torch.ones_like(theta2), theta2)
    theta = torch.sqrt(safe_theta2)
    a = torch.where(small, 1 - theta2 / 6 + theta2**2 / 120, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24 + theta2**2 / 720, (1 - torch.cos(theta)) / safe_theta2)
    K = _hat(omega)
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device).expand(K.shape)
    return eye + a[..., None, None] * K + b[..., None, None] * (K @ K)


def matrix_to_axis_angle(R: torch.Tensor) -> torch.Tensor:
    """Logarithm map: axis-angle vector with angle in ``[0, π]``, via the canonical quaternion."""
    q = matrix_to_quaternion(R)
    w, v = q[..., 0], q[..., 1:]
    s2 = (v * v).sum(-1)
    small = s2 < 1e-8
    s = torch.sqrt(torch.where(small, torch.ones_like(s2), s2))
    # θ = 2 atan2(|v|, w); for small |v| (then w ≈ 1) θ/|v| = (2/w)(1 - |v|²/(3w²)) + O(|v|⁴).
    w_small = w.clamp_min(0.5)
    factor = torch.where(small, 2 / w_small * (1 - s2 / (3 * w_small**2)), 2 * torch.atan2(s, w) / s)
    return v * factor[..., None]


def euler_relion_to_matrix(
    rot_deg: torch.Tensor | float, tilt_deg: torch.Tensor | float, psi_deg: torch.Tensor | float
) -> torch.Tensor:
    """RELION ZYZ Euler angles (degrees) to the pose matrix RELION's ``Euler_angles2matrix`` builds.

    ``A = Rz(-psi) Ry(-tilt) Rz(-rot)`` (= ``(Rz(rot) Ry(tilt) Rz(psi))ᵀ`` with right-handed active
    elementary rotations). ``A`` maps reference (particle) coordinates to image coordinates, so it is
    the pose of this package. The three angles broadcast against each other; the result lives on the device
    of the tensor angles (numbers join them there).
    """
    given = (rot_deg, tilt_deg, psi_deg)
    device = next((a.device for a in given if isinstance(a, torch.Tensor)), None)
    angles = torch.broadcast_tensors(*(torch.as_tensor(a, device=device) for a in given))
    dtype = torch.promote_types(angles[0].dtype, torch.float32)
    a, b, g = (torch.deg2rad(t.to(dtype)) for t in angles)
    ca, sa, cb, sb, cg, sg = torch.cos(a), torch.sin(a), torch.cos(b), torch.sin(b), torch.cos(g), torch.sin(g)
    rows = (
        (cg * cb * ca - sg * sa, cg * cb * sa + sg * ca, -cg * sb),
        (-sg * cb * ca - cg * sa, -sg * cb * sa + cg * ca, sg * sb),
        (sb * ca, sb * sa, cb),
    )
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def matrix_to_euler_relion(R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`euler_relion_to_matrix`: ``(rot_deg, tilt_deg, psi_deg)``.

    ``tilt`` is in ``[0, 180]``, ``rot`` and ``psi`` in ``(-180, 180]``. At the gimbal lock
    (``sin(tilt) ≈ 0``) only ``rot ± psi`` is defined; ``rot = 0`` is returned there, as RELION does.
    """
    _check_matrix(R, "matrix_to_euler_relion")
    sin_tilt = torch.sqrt(R[..., 2, 0] ** 2 + R[..., 2, 1] ** 2)
    tilt = torch.atan2(sin_tilt, R[..., 2, 2])
    locked = sin_tilt < 1e-6
    rot = torch.where(locked, torch.zeros_like(tilt), torch.atan2(R[..., 2, 1], R[..., 2, 0]))
    # tilt = 0: A = Rz(-(rot + psi)); tilt = 180: A = Rz(rot - psi) diag(-1, 1, -1).
    psi_locked = torch.where(
        R[..., 2, 2] > 0,
        torch.atan2(R[..., 0, 1], R[..., 0, 0]),
        torch.atan2(R[..., 0, 1], -R[..., 0, 0]),
    )
    psi = torch.where(locked, psi_locked, torch.atan2(R[..., 1, 2], -R[..., 0, 2]))
    return torch.rad2deg(rot), torch.rad2deg(tilt), torch.rad2deg(psi)


def random_quaternions(
    n: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``n`` unit quaternions uniform on S³ (normalised Gaussians), canonical ``w >= 0``."""
    if n < 0:
        raise ValueError(f"random_quaternions: n must be >= 0, got {n}")
    q = torch.randn(n, 4, generator=generator, dtype=dtype, device=device)
    return standardize_quaternion(torch.nn.functional.normalize(q, dim=-1))


def random_rotations(
    n: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``n`` rotation matrices uniform (Haar) on SO(3), shape (n, 3, 3)."""
    return quaternion_to_matrix(random_quaternions(n, generator=generator, dtype=dtype, device=device))


def geodesic_distance_deg(R1: torch.Tensor, R2: torch.Tensor) -> torch.Tensor:
    """Angle in degrees of the relative rotation ``R1ᵀ R2`` (broadcast over leading dims).

    Uses ``atan2(sin θ, cos θ)`` from the antisymmetric part and the trace, which stays accurate
    near 0° and 180° where ``arccos`` of the trace loses precision.
    """
    _check_matrix(R1, "geodesic_distance_deg")
    _check_matrix(R2, "geodesic_distance_deg")
    M = R1.transpose(-1, -2) @ R2
    cos = (M[..., 0, 0] + M[..., 1, 1] + M[..., 2, 2] - 1) / 2
    axial = torch.stack((M[..., 2, 1] - M[..., 1, 2], M[..., 0, 2] - M[..., 2, 0], M[..., 1, 0] - M[..., 0, 1]), -1)
    sin = torch.sqrt((axial * axial).sum(-1).clamp_min(1e-30)) / 2
    return torch.rad2deg(torch.atan2(sin, cos))


def quaternion_distance(q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    """``min(|q1 - q2|, |q1 + q2|)``: a distance on rotations that ignores the quaternion sign."""
    _check_last(q1, 4, "quaternion_distance", "quaternions")
    _check_last(q2, 4, "quaternion_distance", "quaternions")
    return torch.minimum(torch.linalg.vector_norm(q1 - q2, dim=-1), torch.linalg.vector_norm(q1 + q2, dim=-1))
