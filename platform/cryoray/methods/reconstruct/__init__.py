"""Known-pose reconstruction: fit a voxel density map to particle images whose poses and CTF are known.

The image-formation model is the physics package's: central slice of the map's Fourier transform at the
particle's rotation, CTF, in-plane shift. The map is an ``nn.Parameter`` trained by Adam on the mean squared
error, averaged over the Ray Train workers by DDP. It is the smallest real job of the platform (the runner's
end-to-end check) and a useful tool on its own: a differentiable reconstruction from a refined STAR file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from cryoray.data.particles import iter_particle_batches, particle_stream
from cryoray.data.streams import Stream
from cryoray.errors import CryorayInputError
from cryoray.io.figures import write_fsc_curves
from cryoray.io.manifest import DatasetManifest
from cryoray.io.mrc import write_mrc
from cryoray.physics import CTF_PARAMETERS, form_particle_images, fourier_shell_correlation, fsc_resolution_angstrom
from cryoray.train.context import TrainContext
from cryoray.train.method import Method, TrainState


class ReconstructConfig(BaseModel):
    """Hyperparameters of known-pose reconstruction."""

    model_config = ConfigDict(extra="forbid")
    learning_rate: float = Field(0.01, gt=0, description="Adam step size on voxel values")
    l2_weight: float = Field(1e-4, ge=0, description="Tikhonov weight on the map (damps unconstrained voxels)")
    apply_ctf: bool = Field(True, description="model the CTF recorded with each particle")


class VoxelMap(torch.nn.Module):
    """A real-space density map of D³ voxels, projected through the physics package."""

    def __init__(self, box_px: int) -> None:
        super().__init__()
        self.density = torch.nn.Parameter(torch.zeros(box_px, box_px, box_px))

    def forward(
        self,
        rotations: torch.Tensor,
        pixel_size_angstrom: float,
        origin_angstrom: torch.Tensor,
        ctf_parameters: dict[str, torch.Tensor] | None,
    ) -> torch.Tensor:
        # Through forward, so DDP's gradient all-reduce sees every use of the map.
        return form_particle_images(self.density, rotations, pixel_size_angstrom, origin_angstrom, ctf_parameters)


def predicted_images(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], pixel_size_angstrom: float, with_ctf: bool
) -> torch.Tensor:
    """The simulator's image-formation model applied to the learned map at the batch's known poses."""
    origin = torch.stack([batch["shift_x_angstrom"], batch["shift_y_angstrom"]], dim=-1)
    ctf = {name: batch[name] for name in CTF_PARAMETERS} if with_ctf else None
    return model(batch["rotation"], pixel_size_angstrom, origin, ctf)


class KnownPoseReconstruction(Method[ReconstructConfig]):
    """Voxel-map reconstruction from particle images with known poses and CTF."""

    name = "reconstruct"
    key_metrics = {"map_correlation": "max", "fsc_resolution_0.5_angstrom": "min", "fsc_resolution_0.143_angstrom": "min"}
    config_schema = ReconstructConfig
    dataset_kind = "particles"
    smoke_preset = {"num_workers": 2, "train": {"epochs": 3, "batch_size": 64}}

    def check_dataset(self, dataset_dir: Path, manifest: DatasetManifest, config: ReconstructConfig) -> None:
        super().check_dataset(dataset_dir, manifest, config)
        if not manifest.has_poses:
            raise CryorayInputError(
                dataset_dir / "manifest.json", "poses", "particles with known orientations", "imported without them"
            )

    def datasets(self, dataset_dir: Path, manifest: DatasetManifest, config: BaseModel, seed: int = 0) -> dict[str, Stream]:
        return {"train": particle_stream(dataset_dir, manifest, seed=seed)}

    def setup(self, config: ReconstructConfig, manifest: DatasetManifest, ctx: TrainContext) -> TrainState:
        model = VoxelMap(manifest.box_px).to(ctx.device)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
        return TrainState(modules={"map": model}, optimizers={"map": optimizer})

    def train_batches(self, state: TrainState, config: ReconstructConfig, ctx: TrainContext):
        return iter_particle_batches(
            ctx.datasets["train"], ctx.runner.batch_size, ctx.device, ctx.runner.shuffle_buffer_images, ctx.epoch_seed
        )

    def train_step(
        self, state: TrainState, batch: dict[str, torch.Tensor], config: ReconstructConfig, ctx: TrainContext
    ) -> dict[str, float]:
        with_ctf = config.apply_ctf and ctx.manifest.has_ctf
        predicted = predicted_images(state.modules["map"], batch, ctx.manifest.voxel_size_angstrom, with_ctf)
        losses = {
            "data_mse": torch.mean((predicted - batch["image"]) ** 2),
            "map_l2": config.l2_weight * torch.mean(state.unwrapped("map", VoxelMap).density ** 2),
        }
        total = ctx.step(state.optimizers["map"], losses)
        return {"loss": total.item(), "data_mse": losses["data_mse"].item()}

    def evaluate(self, state: TrainState, config: ReconstructConfig, ctx: TrainContext) -> dict[str, float]:
        reference = _ground_truth(ctx)
        if reference is None:
            return {}
        density = state.unwrapped("map", VoxelMap).density.detach().cpu()
        frequency, fsc = fourier_shell_correlation(density, reference)
        voxel = ctx.manifest.voxel_size_angstrom
        return {
            "fsc_resolution_0.5_angstrom": float(fsc_resolution_angstrom(frequency, fsc, voxel, threshold=0.5)),
            "fsc_resolution_0.143_angstrom": float(fsc_resolution_angstrom(frequency, fsc, voxel, threshold=0.143)),
            "map_correlation": float(np.corrcoef(density.numpy().ravel(), reference.numpy().ravel())[0, 1]),
        }

    def write_artifacts(
        self, state: TrainState, config: ReconstructConfig, ctx: TrainContext, output_dir: Path
    ) -> dict[str, str]:
        if not ctx.is_rank_zero:
            return {}
        voxel = ctx.manifest.voxel_size_angstrom
        density = state.unwrapped("map", VoxelMap).density.detach().cpu()
        map_path = write_mrc(output_dir / "map.mrc", density.numpy(), voxel, overwrite=True)
        artifacts = {"map": str(Path(map_path).resolve())}
        reference = _ground_truth(ctx)
        if reference is not None:
            frequency, fsc = fourier_shell_correlation(density, reference)
            artifacts.update(write_fsc_curves(output_dir, frequency.numpy(), {"fsc": fsc.numpy()}, voxel))
        return artifacts


def _ground_truth(ctx: TrainContext) -> torch.Tensor | None:
    reference = ctx.manifest.ground_truth_map(ctx.dataset_dir)
    return None if reference is None else torch.from_numpy(reference)
