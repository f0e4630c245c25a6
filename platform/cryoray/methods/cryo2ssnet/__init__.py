"""Cryo2SSNet: ab-initio single-particle reconstruction by a pose encoder, a Hartley-space voxel decoder and a
denoised heuristic beam search (DHBS) over a Hopf SO(3) grid, trained in two stages.

Schedule (in optimiser steps of the whole run, so it holds for any epoch count):
1. denoiser pretraining, ``denoiser_pretrain_steps`` (only the MLP denoiser learns, by the unbiased loss);
2. stage 1, the first ``stage1_fraction`` of the remaining steps: for every image DHBS refines the encoder's
   pose on the grid and by gradient descent; the decoder learns from the searched poses r̃ and the encoder
   from ℓ_BS = d_quat(E(I), r̃)² (weight λ), the gradient cut between them. The denoiser is replaced by the
   identity after ``denoiser_active_fraction`` of stage 1;
3. stage 2: end to end through the encoder, decoder learning rate × ``stage2_decoder_lr_factor``.

Ablations: ``use_search=False`` trains end to end from the start (the paper's "no DHBS"), ``gd_steps=0``
drops the GD enhancement, ``use_denoiser=False`` searches on the raw images.

Choices where the paper is silent: 3×3 convolutions without normalisation in the encoder (see
:class:`~cryoray.methods.cryo2ssnet.networks.PoseEncoder`); the GD enhancement perturbs each pose by a left
axis-angle ω (the paper does not say how it parameterises the pose; Adam is an option, as the paper found it
better); the search cost after the denoiser is switched off is the plain ℓ₂ (it ranks candidates exactly as
the unbiased loss does, since both images are standardised); the denoiser is pretrained inside the run's step
budget on the training stream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import ray.data
import torch
from pydantic import BaseModel, ConfigDict, Field

from cryoray.data.particles import iter_particle_batches, particle_dataset
from cryoray.errors import CryorayInputError
from cryoray.io.manifest import DatasetManifest, shard_paths
from cryoray.methods.cryo2ssnet.networks import (
    HartleyDecoder,
    MLPDenoiser,
    PoseEncoder,
)
from cryoray.methods.cryo2ssnet.search import (
    PoseCost,
    beam_search,
    quaternion_distance_squared,
    refine_poses,
    unbiased_l2,
)
from cryoray.methods.single_particle import evaluate_reconstruction, write_pose_model, write_reconstruction_artifacts
from cryoray.physics import snr_db_to_linear, standardize
from cryoray.train.context import TrainContext
from cryoray.train.method import Method, TrainState


class Cryo2SSNetConfig(BaseModel):
    """Hyperparameters of Cryo2SSNet (paper values unless the docstring of the field says otherwise)."""

    model_config = ConfigDict(extra="forbid")
    snr_linear: float | None = Field(
        None, gt=0, description="linear SNR of the images for the unbiased loss; None = the dataset's recipe value"
    )
    particle_radius_fraction: float = Field(
        0.8, gt=0, le=1, description="particle radius / half box: decoder init sphere and denoiser mask"
    )
    encoder_lr: float = Field(1e-4, gt=0)
    decoder_lr: float = Field(1e-2, gt=0)
    stage2_decoder_lr_factor: float = Field(0.1, gt=0, le=1)
    stage1_fraction: float = Field(0.5, ge=0, le=1, description="share of the post-pretraining steps in stage 1")
    bs_weight: float = Field(1.0, ge=0, description="λ of the encoder's beam-search loss ℓ_BS")
    use_search: bool = Field(True, description="False: end to end from the start (ablation 'no DHBS')")
    search_width: int = Field(4, ge=1, le=72, description="beam width c")
    search_depth: int = Field(5, ge=1, le=7, description="beam depth i; the final grid spacing is 60°/2**i")
    gd_steps: int = Field(20, ge=0, description="GD enhancement steps on each searched pose (0: ablation)")
    gd_lr: float = Field(0.05, gt=0)
    gd_optimizer: Literal["sgd", "adam"] = Field("sgd", description="the paper's vanilla GD, or Adam")
    use_denoiser: bool = Field(True, description="False: search on raw images (ablation)")
    denoiser_downsample_factor: int = Field(16, ge=1, description="f: the MLP's narrow width is n²/f")
    denoiser_pretrain_steps: int = Field(300, ge=0)
    denoiser_lr: float = Field(1e-4, gt=0)
    denoiser_active_fraction: float = Field(1 / 3, ge=0, le=1, description="share of stage 1 that searches denoised")
    eval_images: int = Field(512, ge=16, description="held-in images whose encoder poses are scored each epoch")
    alignment_search_level: int = Field(2, ge=0, le=3, description="Hopf level of the map-alignment search")


def dataset_snr_linear(manifest: DatasetManifest) -> float | None:
    """The linear SNR a simulated dataset was built with (None for noiseless or unknown)."""
    if manifest.provenance.get("snr_linear") is not None:
        return float(manifest.provenance["snr_linear"])
    if manifest.provenance.get("snr_db") is not None:
        return float(snr_db_to_linear(manifest.provenance["snr_db"]))
    return None


class Cryo2SSNet(Method[Cryo2SSNetConfig]):
    """Encoder + Hartley decoder + DHBS, two stages."""

    name = "cryo2ssnet"
    config_schema = Cryo2SSNetConfig
    dataset_kind = "particles"
    default_dataset = "particles-phantom"
    smoke_dataset = "particles-smoke"
    default_preset = {"train": {"epochs": 4, "batch_size": 32}}
    smoke_preset = {
        "num_workers": 2,
        "train": {"epochs": 2, "batch_size": 32, "max_steps_per_epoch": 8},
        "method": {
            "denoiser_pretrain_steps": 4,
            "search_depth": 3,
            "gd_steps": 3,
            "eval_images": 64,
            "alignment_search_level": 1,
        },
    }

    def check_dataset(self, dataset_dir: Path, manifest: DatasetManifest, config: Cryo2SSNetConfig) -> None:
        super().check_dataset(dataset_dir, manifest, config)
        if config.snr_linear is None and manifest.provenance.get("source") == "RELION import":
            # Real data: the unbiased loss needs the SNR and no recipe records it.
            raise CryorayInputError(
                dataset_dir / "manifest.json",
                "method.snr_linear",
                "the images' linear SNR (estimate it; over-estimating is safe)",
                "not set",
            )

    def datasets(
        self, dataset_dir: Path, manifest: DatasetManifest, config: Cryo2SSNetConfig, seed: int = 0
    ) -> dict[str, ray.data.Dataset]:
        first_shard = ray.data.read_parquet(shard_paths(dataset_dir, manifest)[0]).limit(config.eval_images)
        return {
            "train": particle_dataset(dataset_dir, manifest, seed=seed),
            "eval": first_shard.select_columns(["image", "particle_index", "rot_deg", "tilt_deg", "psi_deg"]),
            "all": particle_dataset(dataset_dir, manifest, seed=seed),
        }

    def setup(self, config: Cryo2SSNetConfig, manifest: DatasetManifest, ctx: TrainContext) -> TrainState:
        box = manifest.box_px
        radius_px = config.particle_radius_fraction * box / 2
        encoder = PoseEncoder(box).to(ctx.device)
        decoder = HartleyDecoder(box, manifest.voxel_size_angstrom, radius_px).to(ctx.device)
        optimizer = torch.optim.Adam(
            [
                {"params": encoder.parameters(), "lr": config.encoder_lr, "name": "encoder"},
                {"params": decoder.parameters(), "lr": config.decoder_lr, "name": "decoder"},
            ]
        )
        modules: dict[str, torch.nn.Module] = {"encoder": encoder, "decoder": decoder}
        optimizers: dict[str, torch.optim.Optimizer] = {"model": optimizer}
        if config.use_denoiser and config.use_search:
            denoiser = MLPDenoiser(box, config.denoiser_downsample_factor, radius_px).to(ctx.device)
            modules["denoiser"] = denoiser
            optimizers["denoiser"] = torch.optim.Adam(denoiser.parameters(), lr=config.denoiser_lr)
        has_denoiser, total = "denoiser" in modules, ctx.total_steps

        def decoder_lr_factor(step: int) -> float:
            """Stage 2 trains the map with a smaller step (``stage2_decoder_lr_factor``)."""
            in_stage2 = self.schedule(config, has_denoiser, step, total)[0] == "stage2"
            return config.stage2_decoder_lr_factor if in_stage2 else 1.0

        schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = {
            "model": torch.optim.lr_scheduler.LambdaLR(optimizer, [lambda step: 1.0, decoder_lr_factor])
        }
        return TrainState(modules=modules, optimizers=optimizers, schedulers=schedulers)

    def _snr(self, config: Cryo2SSNetConfig, manifest: DatasetManifest) -> float | None:
        return config.snr_linear if config.snr_linear is not None else dataset_snr_linear(manifest)

    @staticmethod
    def schedule(config: Cryo2SSNetConfig, has_denoiser: bool, step: int, total_steps: int) -> tuple[str, bool]:
        """(phase, denoiser on) at global ``step`` of ``total_steps``: phase is "denoiser", "stage1" or "stage2"."""
        pretrain = config.denoiser_pretrain_steps if has_denoiser else 0
        if step < pretrain:
            return "denoiser", True
        if not config.use_search:
            return "stage2", False
        stage1_steps = config.stage1_fraction * (total_steps - pretrain)
        progress = step - pretrain
        if progress >= stage1_steps:
            return "stage2", False
        return "stage1", has_denoiser and progress < config.denoiser_active_fraction * stage1_steps

    def train_batches(self, state: TrainState, config: Cryo2SSNetConfig, ctx: TrainContext):
        return iter_particle_batches(
            ctx.datasets["train"], ctx.runner.batch_size, ctx.device, ctx.runner.shuffle_buffer_images, ctx.epoch_seed
        )

    def search_cost(self, state: TrainState, images: torch.Tensor, ctf: torch.Tensor | None, denoised: bool) -> PoseCost:
        """ℓ₂ between the (denoised) observed images and (denoised) projections of the current map."""
        decoder = state.unwrapped("decoder", HartleyDecoder)
        denoiser = state.unwrapped("denoiser", MLPDenoiser) if denoised else None
        with torch.no_grad():
            hartley = decoder.hartley_volume()
            target = denoiser(images) if denoiser is not None else images

        def cost(rotations: torch.Tensor) -> torch.Tensor:
            rendered = HartleyDecoder.render(hartley, rotations, None if ctf is None else ctf[:, None])
            if denoiser is not None:
                rendered = denoiser(rendered)
            return ((rendered - target[:, None]) ** 2).mean(dim=(-2, -1))

        return cost

    def search(
        self,
        state: TrainState,
        config: Cryo2SSNetConfig,
        images: torch.Tensor,
        ctf: torch.Tensor | None,
        initial: torch.Tensor,
        denoised: bool,
    ) -> torch.Tensor:
        """DHBS: beam search from the encoder's poses, then the GD enhancement (map and denoiser fixed)."""
        cost = self.search_cost(state, images, ctf, denoised)
        with torch.no_grad():
            searched, _ = beam_search(cost, initial, config.search_width, config.search_depth)
        return refine_poses(cost, searched, config.gd_steps, config.gd_lr, config.gd_optimizer)

    def train_step(
        self, state: TrainState, batch: dict[str, torch.Tensor], config: Cryo2SSNetConfig, ctx: TrainContext
    ) -> dict[str, float]:
        images = standardize(batch["image"], 2)
        snr = self._snr(config, ctx.manifest)
        phase, denoised = self.schedule(config, "denoiser" in state.modules, ctx.global_step, ctx.total_steps)
        if phase == "denoiser":
            residual = unbiased_l2(images * state.unwrapped("denoiser", MLPDenoiser).mask, state.modules["denoiser"](images), snr)
            total = ctx.step(state.optimizers["denoiser"], {"denoiser_unbiased_l2": residual.mean()})
            return {"denoiser_loss": total.item()}
        decoder = state.unwrapped("decoder", HartleyDecoder)
        ctf = decoder.ctf(batch) if ctx.manifest.has_ctf else None
        encoded = state.modules["encoder"](images)
        if phase == "stage1":
            searched = self.search(state, config, images, ctf, encoded.detach(), denoised)
            data = unbiased_l2(images, state.modules["decoder"](searched, ctf), snr).mean()
            bs = quaternion_distance_squared(encoded, searched).mean()
            total = ctx.step(
                state.optimizers["model"], {"data_unbiased_l2": data, "beam_search": bs}, {"beam_search": config.bs_weight}
            )
            return {"loss": total.item(), "data_unbiased_l2": data.item(), "beam_search_loss": bs.item(), "stage": 1.0}
        data = unbiased_l2(images, state.modules["decoder"](encoded, ctf), snr).mean()
        total = ctx.step(state.optimizers["model"], {"data_unbiased_l2": data})
        return {"loss": total.item(), "data_unbiased_l2": data.item(), "stage": 2.0}

    def _encode(self, state: TrainState, ctx: TrainContext, name: str) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """Particle indices, encoder poses and true poses of the replicated stream ``name``."""
        encoder = state.unwrapped("encoder")
        indices, predicted, true = [], [], []
        with torch.no_grad():
            for batch in iter_particle_batches(ctx.datasets[name], 256, ctx.device):
                indices.append(batch["particle_index"].long().cpu().numpy())
                predicted.append(encoder(standardize(batch["image"], 2)).cpu())
                true.append(batch["rotation"].cpu())
        return np.concatenate(indices), torch.cat(predicted), torch.cat(true)

    def evaluate(self, state: TrainState, config: Cryo2SSNetConfig, ctx: TrainContext) -> dict[str, float]:
        """Rank 0: the map against ground truth after alignment, and the encoder's pose error."""
        if not ctx.is_rank_zero:
            return {}
        _, predicted, true = self._encode(state, ctx, "eval")
        density = state.unwrapped("decoder", HartleyDecoder).density.detach().cpu()
        evaluation = evaluate_reconstruction(
            density,
            ctx.manifest.ground_truth_map(ctx.dataset_dir),
            ctx.manifest.voxel_size_angstrom,
            predicted,
            true if ctx.manifest.has_poses else None,
            search_level=config.alignment_search_level,
        )
        return evaluation.metrics

    def test(
        self, state: TrainState, config: Cryo2SSNetConfig, ctx: TrainContext, output_dir: Path
    ) -> tuple[dict[str, float], dict[str, str]]:
        """Rank 0: encoder poses of every image (poses.star, pose error over all), map, aligned map and FSC."""
        if not ctx.is_rank_zero:
            return {}, {}
        indices, predicted, true = self._encode(state, ctx, "all")
        density = state.unwrapped("decoder", HartleyDecoder).density.detach().cpu()
        evaluation = evaluate_reconstruction(
            density,
            ctx.manifest.ground_truth_map(ctx.dataset_dir),
            ctx.manifest.voxel_size_angstrom,
            predicted,
            true if ctx.manifest.has_poses else None,
            search_level=config.alignment_search_level,
        )
        artifacts = write_reconstruction_artifacts(output_dir, density, ctx.manifest, evaluation, indices, predicted)
        return evaluation.metrics, artifacts

    def write_artifacts(self, state: TrainState, config: Cryo2SSNetConfig, ctx: TrainContext, output_dir: Path) -> dict[str, str]:
        return write_pose_model(output_dir, self.name, state, config, ctx) if ctx.is_rank_zero else {}
