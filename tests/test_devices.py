"""Physics and one training step of every method on each ``device``: outputs stay on it and match the CPU.

On a machine without CUDA only the CPU case runs (the CUDA case is skipped); on a GPU machine the same tests
check that no grid, mask or constant is left on the host. Method steps run without Ray, on hand-built
``TrainContext``s and synthetic batches of the keys each method's ``train_step`` reads.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from cryoray.config import RunnerConfig
from cryoray.data.pose_table import PoseTable
from cryoray.io.manifest import DatasetManifest, ShardEntry, SpeciesEntry
from cryoray.methods.betagan import BetaGAN, BetaGANConfig
from cryoray.methods.cryo2ssnet import Cryo2SSNet, Cryo2SSNetConfig
from cryoray.methods.cryogen2 import CryoGEN2, CryoGEN2Config
from cryoray.methods.cryospin import CryoSPIN, CryoSpinConfig
from cryoray.methods.reconstruct import KnownPoseReconstruction, ReconstructConfig
from cryoray.methods.robpicker import RobPicker, RobPickerConfig
from cryoray.physics import (
    apply_ctf,
    apply_fourier_mask,
    ctf_2d,
    euler_relion_to_matrix,
    form_particle_images,
    fourier_shell_correlation,
    hopf_children,
    hopf_grid_rotations,
    ht2_centered,
    ht3_centered,
    matrix_to_euler_relion,
    missing_wedge_mask,
    nearest_hopf_neighbours,
    project_fourier_slice,
    random_rotations,
    shift_images,
    sphere_mask,
    standardize,
)
from cryoray.physics.alignment import align_maps, rotate_volume
from cryoray.physics.pose_search import FourierDisc, PoseSearch, search_poses, soft_assignment
from cryoray.train.context import TrainContext
from cryoray.train.method import Method, TrainState

BOX = 16
CTF_VALUES = {
    "defocus_u_angstrom": 12000.0,
    "defocus_v_angstrom": 11000.0,
    "defocus_angle_deg": 30.0,
    "voltage_kv": 300.0,
    "cs_mm": 2.7,
    "amplitude_contrast": 0.1,
    "phase_shift_deg": 0.0,
}


def _on(device: torch.device, *tensors: torch.Tensor) -> None:
    for tensor in tensors:
        assert tensor.device.type == device.type, f"{tuple(tensor.shape)} on {tensor.device}, expected {device}"


def _same(result: torch.Tensor, reference: torch.Tensor, device: torch.device, atol: float = 1e-5) -> None:
    """``result`` lies on ``device`` and equals the CPU ``reference`` to ``atol``."""
    _on(device, result)
    torch.testing.assert_close(result.cpu(), reference, atol=atol, rtol=1e-4)


def _blob(box: int = BOX, seed: int = 0) -> torch.Tensor:
    """A smooth, off-centre test volume (D, D, D)."""
    g = torch.Generator().manual_seed(seed)
    volume = torch.nn.functional.avg_pool3d(torch.randn(1, 1, box + 4, box + 4, box + 4, generator=g), 5, 1)[0, 0]
    return volume * sphere_mask(box, box / 3, 3, soft_edge_px=2.0)


def _ctf_batch(n: int) -> dict[str, torch.Tensor]:
    return {name: torch.full((n,), value) for name, value in CTF_VALUES.items()}


# ---- physics ------------------------------------------------------------------------------------------------------


def test_fourier_slice_projection(device: torch.device) -> None:
    volume, rotations = _blob(), random_rotations(3, generator=torch.Generator().manual_seed(1))
    _same(project_fourier_slice(volume.to(device), rotations.to(device)), project_fourier_slice(volume, rotations), device)


def test_ctf_from_tensors_and_from_numbers(device: torch.device) -> None:
    tensors = _ctf_batch(2)
    reference = ctf_2d(BOX, 1.5, **tensors)
    # float32 χ of up to hundreds of radians: the GPU's sin/cos and fused multiply-adds round differently (3e-5
    # measured on an H200), far below any effect on an image.
    _same(ctf_2d(BOX, 1.5, **{k: v.to(device) for k, v in tensors.items()}), reference, device, atol=1e-4)
    # All numbers: the grid takes the device it is given (the images' device at every call site). Numbers keep
    # the wavelength and phases in double precision, tensors in float32: the two agree to float32 rounding of χ.
    from_numbers = ctf_2d(BOX, 1.5, **CTF_VALUES, device=device)
    _same(from_numbers, reference[:1], device, atol=1e-4)
    images = torch.randn(2, BOX, BOX, generator=torch.Generator().manual_seed(2))
    _same(apply_ctf(images.to(device), from_numbers), apply_ctf(images, reference), device, atol=1e-4)


def test_shift_images(device: torch.device) -> None:
    images = torch.randn(2, BOX, BOX, generator=torch.Generator().manual_seed(3))
    shifts = torch.tensor([[1.5, -0.5], [0.0, 2.25]])
    _same(shift_images(images.to(device), shifts.to(device)), shift_images(images, shifts), device)


def test_image_formation_with_ctf_and_shifts(device: torch.device) -> None:
    volume, rotations = _blob(), random_rotations(2, generator=torch.Generator().manual_seed(4))
    origin = torch.tensor([[3.0, -1.5], [0.0, 4.5]])
    ctf = _ctf_batch(2)
    reference = form_particle_images(volume, rotations, 1.5, origin, ctf)
    result = form_particle_images(
        volume.to(device), rotations.to(device), 1.5, origin.to(device), {k: v.to(device) for k, v in ctf.items()}
    )
    _same(result, reference, device)


def test_missing_wedge_mask_and_its_application(device: torch.device) -> None:
    mask = missing_wedge_mask(BOX, -45.0, 45.0, device=device)
    reference_mask = missing_wedge_mask(BOX, -45.0, 45.0)
    _same(mask, reference_mask, device, atol=0)
    volume = _blob()
    _same(apply_fourier_mask(volume.to(device), mask), apply_fourier_mask(volume, reference_mask), device)


def test_fourier_shell_correlation(device: torch.device) -> None:
    a, b = _blob(seed=5), _blob(seed=6)
    region = 1.0 - missing_wedge_mask(BOX, -60.0, 60.0)
    for kwargs in ({}, {"region": region}):
        frequency, fsc = fourier_shell_correlation(a, b, **kwargs)
        moved = {k: v.to(device) for k, v in kwargs.items()}
        on_device = fourier_shell_correlation(a.to(device), b.to(device), **moved)
        _same(on_device[0], frequency, device)
        _on(device, on_device[1])
        torch.testing.assert_close(on_device[1].cpu(), fsc, atol=1e-5, rtol=1e-4, equal_nan=True)


def test_euler_angles_and_matrices(device: torch.device) -> None:
    angles = [torch.tensor([10.0, -120.0, 75.0]), torch.tensor([30.0, 90.0, 170.0]), torch.tensor([-45.0, 5.0, 0.0])]
    reference = euler_relion_to_matrix(*angles)
    on_device = euler_relion_to_matrix(*(a.to(device) for a in angles))
    _same(on_device, reference, device)
    # Numbers mixed with device tensors join the tensors' device.
    _same(euler_relion_to_matrix(angles[0].to(device), 30.0, -45.0), euler_relion_to_matrix(angles[0], 30.0, -45.0), device)
    for got, want in zip(matrix_to_euler_relion(on_device), matrix_to_euler_relion(reference)):
        _same(got, want, device, atol=1e-3)


def test_hopf_grid_neighbours_and_children(device: torch.device) -> None:
    _same(hopf_grid_rotations(1, device=device), hopf_grid_rotations(1), device)
    rotations = random_rotations(5, generator=torch.Generator().manual_seed(7))
    nearest = nearest_hopf_neighbours(rotations, 1, k=2)
    _same(nearest_hopf_neighbours(rotations.to(device), 1, k=2), nearest, device, atol=0)
    _same(hopf_children(nearest.to(device), 1), hopf_children(nearest, 1), device, atol=0)


def test_pose_search(device: torch.device) -> None:
    volume = _blob()
    truth = random_rotations(3, generator=torch.Generator().manual_seed(8))
    images = project_fourier_slice(volume, truth)

    def search_on(where: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        disc = FourierDisc.build(BOX, 6.0, device=where)
        problem = PoseSearch(ht3_centered(volume.to(where)), disc, disc.take(ht2_centered(images.to(where))), None, "correlation")
        best, cost = search_poses(problem, width=2, final_level=2, start_level=1)
        weights = soft_assignment(problem, 1, 4, 0.01)[1]
        return best, cost, weights

    for got, want in zip(search_on(device), search_on(torch.device("cpu"))):
        _same(got, want, device, atol=1e-4)


def test_map_alignment(device: torch.device) -> None:
    reference = _blob(12)
    rotation = random_rotations(1, generator=torch.Generator().manual_seed(9))[0]
    moving = rotate_volume(reference, rotation.T)
    on_cpu = align_maps(moving, reference, search_level=0, search_box_px=12, refine_box_px=12, refine_steps=5)
    on_device = align_maps(
        moving.to(device), reference.to(device), search_level=0, search_box_px=12, refine_box_px=12, refine_steps=5
    )
    _same(on_device.aligned, on_cpu.aligned, device, atol=1e-3)
    assert on_device.flipped == on_cpu.flipped
    assert on_device.correlation == pytest.approx(on_cpu.correlation, abs=1e-3)


def test_standardize(device: torch.device) -> None:
    images = 3.0 + 2.0 * torch.randn(4, BOX, BOX, generator=torch.Generator().manual_seed(10))
    _same(standardize(images.to(device), 2), standardize(images, 2), device)


# ---- one training step per method -----------------------------------------------------------------------------------


def _particles_manifest(dataset_dir: Path, count: int, **provenance: object) -> DatasetManifest:
    """A particles manifest whose one shard holds only ``particle_index`` (what setup reads; batches are synthetic)."""
    shard = dataset_dir / "shards" / "particles-000.parquet"
    shard.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"particle_index": np.arange(count, dtype=np.int64)}), shard)
    return DatasetManifest(
        name="tiny",
        kind="particles",
        voxel_size_angstrom=2.0,
        box_px=BOX,
        count=count,
        shards=[ShardEntry(path="shards/particles-000.parquet", count=count)],
        columns={},
        provenance=dict(provenance),
    )


def _tomograms_manifest() -> DatasetManifest:
    species = [SpeciesEntry(class_id=i, name=f"s{i}", radius_px=3.0, size_group="small") for i in (1, 2)]
    return DatasetManifest(
        name="tiny",
        kind="tomograms",
        voxel_size_angstrom=10.0,
        box_px=BOX,
        count=1,
        shards=[ShardEntry(path="none.parquet", count=1)],
        columns={},
        species=species,
    )


def _context(manifest: DatasetManifest, dataset_dir: Path, device: torch.device, batch_size: int) -> TrainContext:
    runner = RunnerConfig(epochs=1, batch_size=batch_size)
    return TrainContext(
        rank=0, world_size=1, device=device, dataset_dir=dataset_dir, manifest=manifest, runner=runner, steps_per_epoch=4
    )


def _particle_batch(n: int, device: torch.device, *, clean: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    angles = {name: 360.0 * torch.rand(n, generator=g) - 180.0 for name in ("rot_deg", "tilt_deg", "psi_deg")}
    batch = {
        "image": torch.randn(n, BOX, BOX, generator=g),
        "particle_index": torch.arange(n),
        "shift_x_angstrom": torch.randn(n, generator=g),
        "shift_y_angstrom": torch.randn(n, generator=g),
        **angles,
        **_ctf_batch(n),
    }
    batch["rotation"] = euler_relion_to_matrix(batch["rot_deg"], batch["tilt_deg"], batch["psi_deg"])
    if clean:
        batch["clean_image"] = torch.nn.functional.avg_pool2d(batch["image"][:, None], 3, 1, 1)[:, 0]
    return {name: value.to(device) for name, value in batch.items()}


def _parameters(state: TrainState) -> dict[str, torch.Tensor]:
    return {f"{m}.{n}": p.detach().clone() for m, module in state.modules.items() for n, p in module.named_parameters()}


def _step(method: Method, config, manifest: DatasetManifest, ctx: TrainContext, batch: dict) -> tuple[TrainState, dict]:
    """setup + one train_step; checks the metrics are finite numbers, parameters moved, and stayed on the device."""
    torch.manual_seed(0)
    state = method.setup(config, manifest, ctx)
    before = _parameters(state)
    metrics = method.train_step(state, batch, config, ctx)
    assert metrics and all(isinstance(v, float) and math.isfinite(v) for v in metrics.values()), metrics
    after = _parameters(state)
    moved = [name for name in before if not torch.equal(before[name], after[name])]
    assert moved, "no parameter moved"
    _on(ctx.device, *after.values())
    return state, metrics


def test_robpicker_full_step(device: torch.device, tmp_path: Path) -> None:
    config = RobPickerConfig(
        mode="full", patch_px=8, channels=[2, 4], bottleneck_channels=4, reweighting_hidden=8, inference_overlap_px=2
    )
    manifest = _tomograms_manifest()
    g = torch.Generator().manual_seed(12)
    patches = {
        "patch": torch.randn(2, 8, 8, 8, generator=g),
        "labels": torch.randint(0, 3, (2, 8, 8, 8), generator=g),
        "meta_patch": torch.randn(2, 8, 8, 8, generator=g),
        "meta_labels": torch.randint(0, 3, (2, 8, 8, 8), generator=g),
    }
    batch = {name: value.to(device) for name, value in patches.items()}
    state, metrics = _step(RobPicker(), config, manifest, _context(manifest, tmp_path, device, 2), batch)
    assert "hypergradient_norm" in metrics
    assert {"label_corrector", "reweighter"} <= set(state.modules)


def test_cryogen2_step(device: torch.device, tmp_path: Path) -> None:
    config = CryoGEN2Config(cube_px=16, channels=[4, 8], critic_channels=[4, 4])
    manifest = _tomograms_manifest()
    subtomograms = torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(13)).to(device)
    _step(CryoGEN2(), config, manifest, _context(manifest, tmp_path, device, 2), {"subtomogram": subtomograms})


def test_betagan_step(device: torch.device, tmp_path: Path) -> None:
    config = BetaGANConfig(**{**BetaGAN.smoke_preset["method"], "contamination_fraction": 0.25})
    manifest = _particles_manifest(tmp_path, 8)
    _step(BetaGAN(), config, manifest, _context(manifest, tmp_path, device, 4), _particle_batch(4, device, clean=True))


def test_reconstruct_step(device: torch.device, tmp_path: Path) -> None:
    manifest = _particles_manifest(tmp_path, 8)
    ctx = _context(manifest, tmp_path, device, 4)
    _step(KnownPoseReconstruction(), ReconstructConfig(), manifest, ctx, _particle_batch(4, device))


def test_cryo2ssnet_search_step(device: torch.device, tmp_path: Path) -> None:
    """Stage 1 with the denoised beam search and its GD enhancement (no pretraining, no soft assignment)."""
    config = Cryo2SSNetConfig(
        denoiser_pretrain_steps=0,
        soft_assignment_fraction=0.0,
        global_search_level=1,
        search_depth=2,
        search_width=2,
        gd_steps=1,
    )
    manifest = _particles_manifest(tmp_path, 8, snr_linear=0.5)
    _, metrics = _step(Cryo2SSNet(), config, manifest, _context(manifest, tmp_path, device, 4), _particle_batch(4, device))
    assert metrics["stage"] == 1.0


def test_cryospin_encoding_and_auto_decoding_steps(device: torch.device, tmp_path: Path) -> None:
    """An auto-encoding step (heads + soft assignment), then an auto-decoding step on the pose table."""
    config = CryoSpinConfig(
        **{**CryoSPIN.smoke_preset["method"], "search_level": 0, "search_candidates": 4, "pose_steps_per_batch": 2}
    )
    manifest = _particles_manifest(tmp_path, 8)
    ctx = _context(manifest, tmp_path, device, 4)
    batch = _particle_batch(4, device)
    method = CryoSPIN()
    state, _ = _step(method, config, manifest, ctx, batch)
    table = state.sharded["pose_table"]
    assert isinstance(table, PoseTable)
    rows = table.rows(batch["particle_index"])
    table.set_poses(rows, batch["rotation"])
    state.extra["switched"] = True
    omega_before = table.omega[rows].clone()
    metrics = method.train_step(state, batch, config, ctx)
    assert math.isfinite(metrics["loss"])
    _on(device, table.omega, table.base_rotation)
    assert not torch.equal(table.base_rotation[rows], batch["rotation"]) or not torch.equal(table.omega[rows], omega_before)
