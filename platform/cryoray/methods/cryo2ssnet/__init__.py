"""Cryo2SSNet: ab-initio single-particle reconstruction by a pose encoder, a Hartley-space voxel decoder and a
denoised heuristic beam search (DHBS) over a Hopf SO(3) grid, trained in two stages.

Schedule (in optimiser steps of the whole run, so it holds for any epoch count):
1. denoiser pretraining, ``denoiser_pretrain_steps`` (only the MLP denoiser learns, by the unbiased loss);
2. stage 1, the first ``stage1_fraction`` of the remaining steps: the decoder learns from searched poses and
   the encoder from ℓ_BS = d_quat(E(I), r̃)² (weight λ) to the best of them, the gradient cut between them.
   For the first ``soft_assignment_fraction`` of stage 1 the map learns from a soft assignment over the
   ``soft_assignment_candidates`` best poses of the global Hopf grid (weights softmax(−cost/T), T annealed);
   after it, from DHBS poses (beam from the encoder's pose or the global grid, then GD). The search band
   marches from ``search_band_start``·Nyquist to Nyquist. The denoiser is replaced by the identity after
   ``denoiser_active_fraction`` of stage 1;
3. stage 2 (paper; off by default, ``stage1_fraction: 1``): end to end through the encoder, decoder learning
   rate × ``stage2_decoder_lr_factor``.

Where this departs from the paper, and why (each an option with the paper's behaviour one setting away;
measurements in benchmarks/RESULTS.md): from a random map the hard DHBS settles in a wrong, self-consistent
map (median pose error ~50° at 32 px, SNR 1); soft assignment with annealing and frequency marching, the
standard steps of stochastic ab-initio, reach the global pose. The encoder lags the search at these budgets,
so the written poses are searched against the final map (``output_poses``) and stage 2 is off.

Ablations: ``use_search=False`` trains end to end from the start (the paper's "no DHBS"), ``gd_steps=0``
drops the GD enhancement, ``use_denoiser=False`` searches on the raw images, ``soft_assignment_fraction=0``
and ``search_start=encoder`` give the paper's hard DHBS from the encoder's pose.

Choices where the paper is silent: 3×3 convolutions without normalisation in the encoder (see
:class:`~cryoray.methods.cryo2ssnet.networks.PoseEncoder`); the GD enhancement perturbs each pose by a left
axis-angle ω (Adam is an option, as the paper found it better); the search cost is the ℓ2 between
standardised images over a band-limited Fourier disc (the unbiased loss is affine in it), and the denoised
search compares the denoised image with the noiseless projection; the denoiser is pretrained inside the
run's step budget on the training stream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from cryoray.data.particles import iter_particle_batches, particle_stream
from cryoray.data.streams import ParquetRows, Stream
from cryoray.errors import CryorayInputError
from cryoray.io.manifest import DatasetManifest, shard_paths
from cryoray.methods.cryo2ssnet.networks import (
    HartleyDecoder,
    MLPDenoiser,
    PoseEncoder,
)
from cryoray.methods.cryo2ssnet.search import quaternion_distance_squared, refine_poses, unbiased_l2
from cryoray.methods.single_particle import (
    ReconstructionEvaluation,
    evaluate_reconstruction,
    write_pose_model,
    write_reconstruction_artifacts,
)
from cryoray.physics import CTF_PARAMETERS, ht2_centered, snr_db_to_linear, standardize
from cryoray.physics.pose_search import (
    FourierDisc,
    PoseSearch,
    annealed_temperature,
    band_limit_px,
    disc_costs,
    search_poses,
    soft_assignment,
)
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
    stage1_fraction: float = Field(
        1.0,
        ge=0,
        le=1,
        description="share of the post-pretraining steps in stage 1 (paper: 0.5; at CPU budgets the encoder lags the "
        "search, and stage 2, which renders from the encoder's poses, undoes the map: see benchmarks/RESULTS.md)",
    )
    bs_weight: float = Field(1.0, ge=0, description="λ of the encoder's beam-search loss ℓ_BS")
    use_search: bool = Field(True, description="False: end to end from the start (ablation 'no DHBS')")
    search_width: int = Field(4, ge=1, le=72, description="beam width c")
    search_depth: int = Field(5, ge=1, le=7, description="beam depth i; the final grid spacing is 60°/2**i")
    search_start: Literal["encoder", "global"] = Field(
        "global",
        description="encoder: the paper's beam from the 72 base-grid points nearest the encoder's pose; global: "
        "the best of every rotation of Hopf level global_search_level (the standard ab-initio step; default)",
    )
    global_search_level: int = Field(2, ge=0, le=3, description="Hopf level of the global start (4608 rotations at 2)")
    search_band_start: float = Field(
        0.4, gt=0, le=1, description="search band limit at the start of stage 1, as a fraction of Nyquist"
    )
    search_band_ramp_fraction: float = Field(
        0.5, ge=0, le=1, description="share of stage 1 over which the band limit grows linearly to Nyquist"
    )
    soft_assignment_fraction: float = Field(
        0.6,
        ge=0,
        le=1,
        description="share of stage 1 whose map learns from the soft_assignment_candidates best poses of the global "
        "grid, weighted by softmax(−cost/T), T annealed; then the hard DHBS. 0: the paper's hard search throughout",
    )
    soft_assignment_candidates: int = Field(16, ge=1, le=4608, description="poses kept per image by soft assignment")
    temperature_start: float = Field(0.05, gt=0, description="soft-assignment T at the start (cost 1 − correlation)")
    temperature_end: float = Field(0.002, gt=0, description="soft-assignment T at the end (geometric annealing)")
    stage1_loss_band: bool = Field(
        True,
        description="stage 1's data term over the search's band only (the unbiased loss is affine in the "
        "correlation of standardised images, so this is that loss, band-limited); False: the full image",
    )
    gd_steps: int = Field(20, ge=0, description="GD enhancement steps on each searched pose (0: ablation)")
    gd_lr: float = Field(0.05, gt=0)
    gd_optimizer: Literal["sgd", "adam"] = Field("sgd", description="the paper's vanilla GD, or Adam")
    use_denoiser: bool = Field(True, description="False: search on raw images (ablation)")
    denoiser_downsample_factor: int = Field(16, ge=1, description="f: the MLP's narrow width is n²/f")
    denoiser_pretrain_steps: int = Field(300, ge=0)
    denoiser_lr: float = Field(1e-4, gt=0)
    denoiser_active_fraction: float = Field(1 / 3, ge=0, le=1, description="share of stage 1 that searches denoised")
    output_poses: Literal["search", "encoder"] = Field(
        "search",
        description="poses written and scored: search (default: each image searched against the final map, from the "
        "global grid to search_depth, then GD) or encoder (the paper's amortised poses; their error is reported "
        "as encoder_pose_error_median_deg either way)",
    )
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
    key_metrics = {"fsc_resolution_0.5_angstrom": "min", "pose_error_median_deg": "min", "map_correlation": "max"}
    config_schema = Cryo2SSNetConfig
    dataset_kind = "particles"
    default_preset = {"train": {"epochs": 10, "batch_size": 32}, "method": {"denoiser_pretrain_steps": 50, "eval_images": 256}}
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
    ) -> dict[str, Stream]:
        columns = ("image", "particle_index", "rot_deg", "tilt_deg", "psi_deg", *CTF_PARAMETERS)
        first_shard = (shard_paths(dataset_dir, manifest)[0],)
        return {
            "train": particle_stream(dataset_dir, manifest, seed=seed),
            "eval": ParquetRows(files=first_shard, columns=columns, shuffle_files=False, limit=config.eval_images),
            "all": particle_stream(dataset_dir, manifest, seed=seed),
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
    def _stage1_span(config: Cryo2SSNetConfig, has_denoiser: bool, total_steps: int) -> tuple[int, float]:
        """(denoiser pretraining steps, stage-1 steps) of a run of ``total_steps``."""
        pretrain = config.denoiser_pretrain_steps if has_denoiser else 0
        return pretrain, config.stage1_fraction * (total_steps - pretrain)

    @staticmethod
    def schedule(config: Cryo2SSNetConfig, has_denoiser: bool, step: int, total_steps: int) -> tuple[str, bool]:
        """(phase, denoiser on) at global ``step`` of ``total_steps``: phase is "denoiser", "stage1" or "stage2"."""
        pretrain, stage1_steps = Cryo2SSNet._stage1_span(config, has_denoiser, total_steps)
        if step < pretrain:
            return "denoiser", True
        progress = step - pretrain
        if not config.use_search or progress >= stage1_steps:
            return "stage2", False
        return "stage1", has_denoiser and progress < config.denoiser_active_fraction * stage1_steps

    @staticmethod
    def stage1_progress(config: Cryo2SSNetConfig, has_denoiser: bool, step: int, total_steps: int) -> float:
        """How far through stage 1 global ``step`` is, in [0, 1]."""
        pretrain, stage1_steps = Cryo2SSNet._stage1_span(config, has_denoiser, total_steps)
        return min(1.0, max(0.0, (step - pretrain) / stage1_steps)) if stage1_steps > 0 else 1.0

    def train_batches(self, state: TrainState, config: Cryo2SSNetConfig, ctx: TrainContext):
        return iter_particle_batches(
            ctx.datasets["train"], ctx.runner.batch_size, ctx.device, ctx.runner.shuffle_buffer_images, ctx.epoch_seed
        )

    @staticmethod
    def correlation_to_unbiased_l2(cost: torch.Tensor, snr_linear: float | None) -> torch.Tensor:
        """ℓ₂^{γ,c} of standardised images from their correlation ρ = 1 − ``cost``: γ² + 1 − c − 2γρ."""
        gamma2, c = (1.0, 0.0) if snr_linear is None else (1.0 + 1.0 / snr_linear, 1.0 / snr_linear)
        return gamma2 + 1.0 - c - 2.0 * gamma2**0.5 * (1.0 - cost)

    def pose_problem(
        self, state: TrainState, images: torch.Tensor, ctf: torch.Tensor | None, denoised: bool, band_px: float
    ) -> PoseSearch:
        """The images against the current map over the disc below ``band_px``; the cost is the ℓ2 between
        standardised images. The denoised search compares the denoised image with the (noiseless) projection
        of the map: denoising every candidate projection too, as the paper does, would cost an MLP pass per
        candidate and cannot be written as a matrix product."""
        with torch.no_grad():
            target = state.unwrapped("denoiser", MLPDenoiser)(images) if denoised else images
            disc = FourierDisc.build(images.shape[-1], band_px, dtype=images.dtype, device=images.device)
            hartley = state.unwrapped("decoder", HartleyDecoder).hartley_volume()
            return PoseSearch(
                hartley, disc, disc.take(ht2_centered(target)), None if ctf is None else disc.take(ctf), "correlation"
            )

    def search(self, problem: PoseSearch, config: Cryo2SSNetConfig, initial: torch.Tensor) -> torch.Tensor:
        """DHBS: beam search (from the encoder's poses, or global), then the GD enhancement (map fixed)."""
        global_start = config.search_start == "global"
        with torch.no_grad():
            searched, _ = search_poses(
                problem,
                width=config.search_width,
                final_level=max(config.search_depth, config.global_search_level if global_start else 0),
                start_level=config.global_search_level if global_start else 0,
                initial=None if global_start else initial,
            )
        return refine_poses(problem.cost, searched, config.gd_steps, config.gd_lr, config.gd_optimizer)

    def stage1_poses(
        self,
        state: TrainState,
        config: Cryo2SSNetConfig,
        images: torch.Tensor,
        ctf: torch.Tensor | None,
        encoded: torch.Tensor,
        denoised: bool,
        progress: float,
        band_px: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1's poses for the map (B, K, 3, 3) and their weights (B, K): soft assignment first, then DHBS."""
        problem = self.pose_problem(state, images, ctf, denoised, band_px)
        if progress < config.soft_assignment_fraction:
            share = progress / config.soft_assignment_fraction
            temperature = annealed_temperature(config.temperature_start, config.temperature_end, share)
            with torch.no_grad():
                candidates, weights, _ = soft_assignment(
                    problem, config.global_search_level, config.soft_assignment_candidates, temperature
                )
            return candidates, weights
        searched = self.search(problem, config, encoded.detach())
        return searched[:, None], torch.ones(len(searched), 1, dtype=images.dtype, device=images.device)

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
            progress = self.stage1_progress(config, "denoiser" in state.modules, ctx.global_step, ctx.total_steps)
            band_px = band_limit_px(images.shape[-1], config.search_band_start, config.search_band_ramp_fraction, progress)
            poses, weights = self.stage1_poses(state, config, images, ctf, encoded, denoised, progress, band_px)
            searched = poses[:, 0]  # the best pose: the encoder's target
            if config.stage1_loss_band:
                disc = FourierDisc.build(images.shape[-1], band_px, dtype=images.dtype, device=images.device)
                templates = state.modules["decoder"](poses.reshape(-1, 3, 3), None, disc).reshape(*poses.shape[:2], -1)
                cost = disc_costs(
                    disc.take(ht2_centered(images)), None if ctf is None else disc.take(ctf), templates, "correlation"
                )
                per_pose = self.correlation_to_unbiased_l2(cost, snr)
            else:
                per_pose = unbiased_l2(
                    images[:, None], state.modules["decoder"](poses, None if ctf is None else ctf[:, None]), snr
                )
            data = (weights * per_pose).sum(1).mean()
            bs = quaternion_distance_squared(encoded, searched).mean()
            total = ctx.step(
                state.optimizers["model"], {"data_unbiased_l2": data, "beam_search": bs}, {"beam_search": config.bs_weight}
            )
            return {"loss": total.item(), "data_unbiased_l2": data.item(), "beam_search_loss": bs.item(), "stage": 1.0}
        data = unbiased_l2(images, state.modules["decoder"](encoded, ctf), snr).mean()
        total = ctx.step(state.optimizers["model"], {"data_unbiased_l2": data})
        return {"loss": total.item(), "data_unbiased_l2": data.item(), "stage": 2.0}

    def _poses(
        self, state: TrainState, config: Cryo2SSNetConfig, ctx: TrainContext, name: str
    ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Particle indices, encoder poses, output poses and true poses of the replicated stream ``name``.

        The output poses are the encoder's (``output_poses: encoder``, the paper's amortised inference) or a
        global search of every image against the final map to Nyquist with the GD enhancement (``search``).
        """
        encoder = state.unwrapped("encoder")
        decoder = state.unwrapped("decoder", HartleyDecoder)
        indices, encoded, output, true = [], [], [], []
        for batch in iter_particle_batches(ctx.datasets[name], 256, ctx.device):
            images = standardize(batch["image"], 2)
            with torch.no_grad():
                poses = encoder(images)
            indices.append(batch["particle_index"].long().cpu().numpy())
            encoded.append(poses.cpu())
            if config.output_poses == "search":
                ctf = decoder.ctf(batch) if ctx.manifest.has_ctf else None
                problem = self.pose_problem(state, images, ctf, False, images.shape[-1] // 2)
                poses = self.search(problem, config.model_copy(update={"search_start": "global"}), poses)
            output.append(poses.cpu())
            true.append(batch["rotation"].cpu())
        return np.concatenate(indices), torch.cat(encoded), torch.cat(output), torch.cat(true)

    def _scores(
        self, state: TrainState, config: Cryo2SSNetConfig, ctx: TrainContext, name: str
    ) -> tuple[ReconstructionEvaluation, np.ndarray, torch.Tensor, torch.Tensor]:
        """The map and output poses of stream ``name`` scored against ground truth, plus the encoder's pose error."""
        indices, encoded, output, true = self._poses(state, config, ctx, name)
        density = state.unwrapped("decoder", HartleyDecoder).density.detach().cpu()
        true_or_none = true if ctx.manifest.has_poses else None
        evaluation = evaluate_reconstruction(
            density,
            ctx.manifest.ground_truth_map(ctx.dataset_dir),
            ctx.manifest.voxel_size_angstrom,
            output,
            true_or_none,
            search_level=config.alignment_search_level,
            symmetry=ctx.manifest.symmetry,
        )
        if true_or_none is not None and config.output_poses == "search":
            encoder_errors = evaluate_reconstruction(
                density, None, ctx.manifest.voxel_size_angstrom, encoded, true_or_none, symmetry=ctx.manifest.symmetry
            ).metrics
            evaluation.metrics["encoder_pose_error_median_deg"] = encoder_errors["pose_error_median_deg"]
        return evaluation, indices, output, density

    def evaluate(self, state: TrainState, config: Cryo2SSNetConfig, ctx: TrainContext) -> dict[str, float]:
        """Rank 0: the map against ground truth after alignment, and the pose errors (output and encoder)."""
        if not ctx.is_rank_zero:
            return {}
        return self._scores(state, config, ctx, "eval")[0].metrics

    def test(
        self, state: TrainState, config: Cryo2SSNetConfig, ctx: TrainContext, output_dir: Path
    ) -> tuple[dict[str, float], dict[str, str]]:
        """Rank 0: output poses of every image (poses.star, pose error over all), map, aligned map and FSC."""
        if not ctx.is_rank_zero:
            return {}, {}
        evaluation, indices, output, density = self._scores(state, config, ctx, "all")
        artifacts = write_reconstruction_artifacts(output_dir, density, ctx.manifest, evaluation, indices, output)
        return evaluation.metrics, artifacts

    def write_artifacts(self, state: TrainState, config: Cryo2SSNetConfig, ctx: TrainContext, output_dir: Path) -> dict[str, str]:
        return write_pose_model(output_dir, self.name, state, config, ctx) if ctx.is_rank_zero else {}
