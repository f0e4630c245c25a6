"""cryoSPIN: semi-amortized ab-initio pose inference (Shekarforoush et al.) on the cryoray runner.

Stage 1, auto-encoding: a multi-head encoder proposes M poses per image; the Hartley-volume decoder renders
all M central slices; the per-image loss is the minimum over heads (winner-takes-all), so only the winning
head learns from an image. Stage 2, auto-decoding (from ``switch_epoch``): every image's pose is initialised
from its best head and stored in a per-image table (``R = Exp(ω)·R_base``, ω axis-angle), then poses and
volume are optimised by coordinate descent: ``pose_steps_per_batch`` Adam steps on the batch's poses with
the volume fixed, then one Adam step on the volume with the poses fixed. ``fully_amortized`` keeps encoding
to the end (the paper's baseline).

Distribution: the volume and the encoder are DDP modules (gradients averaged, so replicas stay equal); the
pose table is NOT replicated. Each worker owns a fixed block of images (``cryoray.data.pose_table``), reads
exactly those rows every epoch, holds their poses and per-row Adam state, and checkpoints them into its own
file of the run's checkpoint (``TrainState.sharded``). Pose steps touch only local rows and a detached copy
of the volume, so they need no communication beyond the finite-loss check.

Search (``pose_proposals: heads+search``, the default; ``heads`` is the paper): at CPU budgets the winning
heads of a randomly initialised encoder never place the images (median pose error ~43° at 32 px, SNR 1), so
while auto-encoding the volume learns from a soft assignment over the best poses of a global Hopf-grid search
(physics.pose_search: annealed temperature, band limit marching to Nyquist), the heads keep the paper's
winner-takes-all loss against that volume, and the pose table starts from the better of the best head and a
global search. The volume is zero beyond Nyquist (no loss ever sees those coefficients).

Defaults and where the paper and its public code differ: the loss is the paper's Gaussian
NLL (``loss: l1`` is the code's masked complex L1), the learning rates are the paper's (the code's are 10×
lower for the decoder), the pose Adam uses the standard betas (the code: (0.9, 0.9)), and the per-image Adam
moves only the rows of the batch (the code's dense Adam keeps nudging every image with stale momentum).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field

from cryoray.data.pose_table import (
    PoseTable,
    RowChunk,
    iter_owned_batches,
    owned_chunks,
    owned_row_range,
    read_owned_columns,
    read_particle_indices,
)
from cryoray.data.streams import Stream
from cryoray.errors import CryorayInputError
from cryoray.io.figures import agg_figure
from cryoray.io.manifest import DatasetManifest
from cryoray.methods.cryospin.networks import (
    HartleyVolume,
    PoseEncoder,
    batch_ctf,
    loss_mask,
    observed_fourier,
    per_image_loss,
    render_fourier,
)
from cryoray.methods.single_particle import evaluate_reconstruction, write_pose_model, write_reconstruction_artifacts
from cryoray.physics import euler_relion_to_matrix, ht2_centered, slice_volume_fourier
from cryoray.physics.pose_search import (
    FourierDisc,
    PoseSearch,
    annealed_temperature,
    band_limit_px,
    search_poses,
    soft_assignment,
)
from cryoray.train.context import TrainContext
from cryoray.train.method import Method, TrainState


class CryoSpinConfig(BaseModel):
    """Hyperparameters of cryoSPIN; the defaults are the paper's settings for synthetic data."""

    model_config = ConfigDict(extra="forbid")
    n_heads: int = Field(7, ge=1, description="pose heads M of the encoder (paper: 7 synthetic, 15 real)")
    encoder_channels: list[int] = Field(
        [64, 128, 256, 256, 256], min_length=1, description="conv width per VGG stage (the public code's VGG16)"
    )
    encoder_convs_per_stage: list[int] = Field([2, 2, 3, 2, 2], min_length=1, description="3×3 convs per stage")
    head_hidden: list[int] = Field([512, 256], description="hidden widths of each fully-connected head")
    mantissa_init_std: float = Field(0.1, gt=0, description="std of the random initial Hartley mantissa")
    encoder_lr: float = Field(1e-4, gt=0, description="Adam step of encoder + heads (paper and code)")
    decoder_lr: float = Field(0.05, gt=0, description="Adam step of the volume while auto-encoding (code: 0.005)")
    decoder_lr_after_switch: float = Field(0.02, gt=0, description="volume step once auto-decoding (code: 0.002)")
    pose_lr: float = Field(0.05, gt=0, description="Adam step of the per-image axis-angle poses")
    pose_adam_betas: tuple[float, float] = Field((0.9, 0.999), description="pose Adam betas (code: (0.9, 0.9))")
    switch_epoch: int = Field(7, ge=0, description="epochs of auto-encoding before auto-decoding (paper: 7 of 20)")
    fully_amortized: bool = Field(False, description="never switch: keep encoding poses (the paper's baseline)")
    pose_steps_per_batch: int = Field(5, ge=1, description="pose Adam steps per volume step while auto-decoding")
    fold_poses_after_batch: bool = Field(
        True, description="after a batch's pose steps set R_base ← Exp(ω)R_base, ω ← 0 (paper eq. 6 and code)"
    )
    loss: Literal["gaussian_nll", "l1"] = Field(
        "gaussian_nll", description="gaussian_nll (paper eq. 2/5) or l1: masked complex L1 (public code)"
    )
    noise_variance: float = Field(1.0, gt=0, description="σ² of the Gaussian NLL per Fourier coefficient")
    loss_radius_fraction: float = Field(1.0, gt=0, le=1, description="loss disc radius as a fraction of Nyquist")
    apply_ctf: bool = Field(True, description="model each particle's CTF")
    learn_shifts: bool = Field(False, description="also infer in-plane shifts (the paper's synthetic runs: off)")
    max_shift_px: float = Field(4.0, ge=0, description="bound of the encoder's predicted shifts, pixels")
    pose_proposals: Literal["heads", "heads+search"] = Field(
        "heads+search",
        description="heads: the paper (the volume learns from each image's winning head); heads+search (default): "
        "while auto-encoding the volume learns from a soft assignment over the search_candidates best poses of a "
        "Hopf grid (weights softmax(−cost/T), T annealed, the band limit marching to Nyquist), the heads keep "
        "their winner-takes-all loss against that volume, and auto-decoding starts from the better of the best "
        "head and a global search",
    )
    search_level: int = Field(2, ge=0, le=3, description="Hopf level of the global search (4608 rotations at 2)")
    search_candidates: int = Field(16, ge=1, le=4608, description="poses per image kept by the soft assignment")
    search_final_level: int = Field(5, ge=0, le=7, description="Hopf level the switch's global search descends to")
    search_width: int = Field(4, ge=1, le=72, description="beam width of the switch's global search")
    search_band_start: float = Field(0.4, gt=0, le=1, description="search band at the start, fraction of Nyquist")
    search_band_ramp_fraction: float = Field(0.5, ge=0, le=1, description="share of auto-encoding to reach Nyquist")
    temperature_start: float = Field(0.05, gt=0, description="soft-assignment T at the start (cost 1 − correlation)")
    temperature_end: float = Field(0.002, gt=0, description="soft-assignment T at the switch (geometric annealing)")
    eval_pose_images: int = Field(1000, ge=1, description="images per worker scored for the per-epoch pose error")
    fsc_every_epochs: int = Field(
        1, ge=1, description="align + FSC against ground truth every N epochs (the final scores always have it)"
    )
    align_search_level: int = Field(2, ge=0, le=3, description="Hopf grid level of the global map alignment")


@dataclass
class _WorkerRun:
    """Per-worker runtime (not checkpointed): this rank's rows, the loss mask and this epoch's tallies."""

    chunks: list[RowChunk]
    batches_per_epoch: int
    mask: torch.Tensor
    head_wins: torch.Tensor
    eval_indices: list[torch.Tensor] = field(default_factory=list)
    eval_predicted: list[torch.Tensor] = field(default_factory=list)
    eval_true: list[torch.Tensor] = field(default_factory=list)

    def record(self, limit: int, particle_index: torch.Tensor, predicted: torch.Tensor, batch: dict) -> None:
        """Keep up to ``limit`` (image, pose) pairs of this epoch for the pose error (ground truth: scoring only)."""
        room = limit - sum(len(i) for i in self.eval_indices)
        if room <= 0:
            return
        true = euler_relion_to_matrix(batch["rot_deg"], batch["tilt_deg"], batch["psi_deg"])
        self.eval_indices.append(particle_index[:room].cpu())
        self.eval_predicted.append(predicted[:room].detach().cpu())
        self.eval_true.append(true[:room].detach().cpu())

    def take_records(self) -> tuple[torch.Tensor, torch.Tensor]:
        predicted = torch.cat(self.eval_predicted) if self.eval_predicted else torch.zeros(0, 3, 3)
        true = torch.cat(self.eval_true) if self.eval_true else torch.zeros(0, 3, 3)
        self.eval_indices, self.eval_predicted, self.eval_true = [], [], []
        return predicted, true


class CryoSPIN(Method[CryoSpinConfig]):
    """cryoSPIN: multi-head pose encoder, then per-image pose auto-decoding, with a Hartley-space volume."""

    name = "cryospin"
    key_metrics = {"pose_error_median_deg": "min", "pose_error_mean_deg": "min"}
    config_schema = CryoSpinConfig
    dataset_kind = "particles"
    # The built-in default is sized for a CPU box (jobs/configs/cryospin-paper.yaml has the paper's run).
    default_preset = {
        "train": {"epochs": 10, "batch_size": 32, "cpus_per_worker": 0.5},
        "method": {
            "encoder_channels": [16, 32, 64, 64],
            "encoder_convs_per_stage": [1, 1, 2, 2],
            "head_hidden": [128, 64],
            "switch_epoch": 5,
            "fsc_every_epochs": 5,
        },
    }
    smoke_preset = {
        "num_workers": 2,
        "train": {"epochs": 6, "batch_size": 32},
        "method": {
            "encoder_channels": [8, 16, 32],
            "encoder_convs_per_stage": [1, 1, 1],
            "head_hidden": [64],
            "n_heads": 4,
            "switch_epoch": 3,
            "fsc_every_epochs": 100,
            "eval_pose_images": 512,
            "align_search_level": 1,
            "search_level": 1,
            "search_final_level": 4,
        },
    }

    def check_dataset(self, dataset_dir: Path, manifest: DatasetManifest, config: CryoSpinConfig) -> None:
        super().check_dataset(dataset_dir, manifest, config)
        missing = [c for c in ("image", "particle_index", "rot_deg", "defocus_u_angstrom") if c not in manifest.columns]
        if missing:
            expected = "a particles dataset with image, pose and CTF columns"
            raise CryorayInputError(dataset_dir / "manifest.json", "columns", expected, f"missing {missing}")

    def datasets(self, dataset_dir: Path, manifest: DatasetManifest, config: BaseModel, seed: int = 0) -> dict[str, Stream]:
        # No stream: each worker reads its own fixed rows (the per-image table needs a fixed assignment).
        return {}

    # ---- worker side ----

    def setup(self, config: CryoSpinConfig, manifest: DatasetManifest, ctx: TrainContext) -> TrainState:
        if manifest.count < ctx.world_size:
            raise CryorayInputError(ctx.dataset_dir, "count", f"at least one image per worker ({ctx.world_size})", manifest.count)
        chunks = owned_chunks(ctx.dataset_dir, manifest, ctx.rank, ctx.world_size)
        largest = max(hi - lo for lo, hi in (owned_row_range(manifest.count, r, ctx.world_size) for r in range(ctx.world_size)))
        table = PoseTable(read_particle_indices(chunks), ctx.device)
        encoder = PoseEncoder(
            manifest.box_px,
            config.encoder_channels,
            config.encoder_convs_per_stage,
            config.head_hidden,
            config.n_heads,
            predict_shifts=config.learn_shifts,
            max_shift_px=config.max_shift_px,
        ).to(ctx.device)
        generator = torch.Generator().manual_seed(ctx.runner.seed)  # the same initial volume on every rank
        decoder = HartleyVolume(manifest.box_px, config.mantissa_init_std, generator).to(ctx.device)
        optimizer = torch.optim.Adam(
            [
                {"params": list(encoder.parameters()), "lr": config.encoder_lr},
                {"params": list(decoder.parameters()), "lr": config.decoder_lr},
            ]
        )
        # The volume's step size drops at the switch to auto-decoding (the encoder's group keeps its own).
        switch_step = math.inf if config.fully_amortized else config.switch_epoch * ctx.steps_per_epoch
        after = config.decoder_lr_after_switch / config.decoder_lr
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, [lambda step: 1.0, lambda step: after if step >= switch_step else 1.0]
        )
        runtime = _WorkerRun(
            chunks=chunks,
            batches_per_epoch=-(-largest // ctx.runner.batch_size),
            mask=loss_mask(manifest.box_px, config.loss_radius_fraction, ctx.device),
            head_wins=torch.zeros(config.n_heads, dtype=torch.float64, device=ctx.device),
        )
        return TrainState(
            modules={"encoder": encoder, "decoder": decoder},
            optimizers={"model": optimizer},
            schedulers={"model": schedule},
            extra={"switched": False, "head_wins_at_switch": None},
            sharded={"pose_table": table},
            runtime=runtime,
        )

    def begin_epoch(self, state: TrainState, config: CryoSpinConfig, ctx: TrainContext) -> None:
        """At ``switch_epoch``: initialise the pose table from the best heads (also after a resume before it)."""
        if not config.fully_amortized and ctx.epoch >= config.switch_epoch and not state.extra["switched"]:
            self._switch_to_auto_decoding(state, config, ctx)
        table = _pose_table(state)
        if state.extra["switched"] and not table.fully_initialized:
            raise RuntimeError(
                f"rank {ctx.rank}: auto-decoding, but {int((~table.initialized).sum())} of its images have no pose "
                "(the checkpoint lacks their pose-table rows)"
            )

    def train_batches(self, state: TrainState, config: CryoSpinConfig, ctx: TrainContext):
        return iter_owned_batches(
            state.runtime.chunks,
            ctx.runner.batch_size,
            ctx.device,
            num_batches=state.runtime.batches_per_epoch,
            shuffle_buffer_images=ctx.runner.shuffle_buffer_images,
            seed=ctx.epoch_seed,
        )

    def _forward_terms(
        self, batch: dict[str, torch.Tensor], config: CryoSpinConfig, ctx: TrainContext
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        ctf = (
            batch_ctf(batch, ctx.manifest.box_px, ctx.manifest.voxel_size_angstrom)
            if config.apply_ctf and ctx.manifest.has_ctf
            else None
        )
        return ctf, observed_fourier(batch["image"])

    def head_losses(
        self,
        slices_of: Callable[[torch.Tensor], torch.Tensor],
        rotations: torch.Tensor,
        shifts_px: torch.Tensor | None,
        batch: dict[str, torch.Tensor],
        mask: torch.Tensor,
        config: CryoSpinConfig,
        ctx: TrainContext,
    ) -> torch.Tensor:
        """(B, M) loss of every head's pose over the Fourier ``mask``; ``slices_of`` maps (N, 3, 3) rotations to
        Hartley slices."""
        ctf, observed = self._forward_terms(batch, config, ctx)
        b, m = rotations.shape[:2]
        slices = slices_of(rotations.reshape(b * m, 3, 3)).reshape(b, m, *observed.shape[-2:])
        predicted = render_fourier(slices, None if ctf is None else ctf[:, None], shifts_px)
        return per_image_loss(predicted, observed[:, None], mask, config.loss, config.noise_variance)

    def train_step(
        self, state: TrainState, batch: dict[str, torch.Tensor], config: CryoSpinConfig, ctx: TrainContext
    ) -> dict[str, float]:
        if state.extra["switched"]:
            return self._auto_decoding_step(state, batch, config, ctx)
        rotations, shifts = state.modules["encoder"](batch["image"])
        runtime: _WorkerRun = state.runtime
        if config.pose_proposals == "heads":
            per_head = self.head_losses(state.modules["decoder"], rotations, shifts, batch, runtime.mask, config, ctx)
            best, winner = per_head.min(dim=1)  # winner-takes-all: only the best head's loss is back-propagated
            total = ctx.step(state.optimizers["model"], {"data": best.mean()})
            chosen = rotations[torch.arange(len(winner), device=winner.device), winner]
        else:
            volume = state.unwrapped("decoder", HartleyVolume).hartley().detach()
            per_head = self.head_losses(
                lambda r: slice_volume_fourier(volume, r), rotations, shifts, batch, runtime.mask, config, ctx
            )
            best, winner = per_head.min(dim=1)
            switch_step = (config.switch_epoch if not config.fully_amortized else ctx.runner.epochs) * ctx.steps_per_epoch
            progress = ctx.global_step / max(switch_step, 1)
            candidates, weights = self.soft_proposals(volume, batch, config, ctx, progress)
            per_pose = self.head_losses(state.modules["decoder"], candidates, None, batch, runtime.mask, config, ctx)
            total = ctx.step(state.optimizers["model"], {"data": best.mean(), "volume_soft": (weights * per_pose).sum(1).mean()})
            chosen = candidates[:, 0]
        runtime.head_wins += torch.bincount(winner, minlength=config.n_heads).to(runtime.head_wins)
        runtime.record(config.eval_pose_images, batch["particle_index"], chosen, batch)
        return {"loss": total.item()}

    def pose_problem(
        self, volume: torch.Tensor, batch: dict[str, torch.Tensor], config: CryoSpinConfig, ctx: TrainContext, band_px: float
    ) -> PoseSearch:
        """The batch's images against ``volume`` (Hartley) over the disc below ``band_px`` (cost: correlation)."""
        ctf, _ = self._forward_terms(batch, config, ctx)
        image = batch["image"]
        disc = FourierDisc.build(image.shape[-1], band_px, dtype=image.dtype, device=image.device)
        return PoseSearch(volume, disc, disc.take(ht2_centered(image)), None if ctf is None else disc.take(ctf), "correlation")

    @torch.no_grad()
    def soft_proposals(
        self, volume: torch.Tensor, batch: dict[str, torch.Tensor], config: CryoSpinConfig, ctx: TrainContext, progress: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The grid poses (B, K, 3, 3) the volume learns from while auto-encoding, best first, and their weights."""
        band_px = band_limit_px(ctx.manifest.box_px, config.search_band_start, config.search_band_ramp_fraction, progress)
        temperature = annealed_temperature(config.temperature_start, config.temperature_end, progress)
        problem = self.pose_problem(volume, batch, config, ctx, band_px)
        candidates, weights, _ = soft_assignment(problem, config.search_level, config.search_candidates, temperature)
        return candidates, weights

    def _auto_decoding_step(
        self, state: TrainState, batch: dict[str, torch.Tensor], config: CryoSpinConfig, ctx: TrainContext
    ) -> dict[str, float]:
        table = _pose_table(state)
        runtime: _WorkerRun = state.runtime
        rows = table.rows(batch["particle_index"])
        ctf, observed = self._forward_terms(batch, config, ctx)
        volume = state.unwrapped("decoder", HartleyVolume).hartley().detach()  # pose steps: local, the volume held fixed
        for _ in range(config.pose_steps_per_batch):
            omega = table.omega[rows].clone().requires_grad_(True)
            shifts = table.shift_px[rows].clone().requires_grad_(True) if config.learn_shifts else None
            predicted = render_fourier(slice_volume_fourier(volume, table.rotations(rows, omega)), ctf, shifts)
            # A sum over images: each image's pose gets exactly its own gradient, whatever the batch size.
            pose_loss = per_image_loss(predicted, observed, runtime.mask, config.loss, config.noise_variance).sum()
            ctx.check_finite({"pose": pose_loss})
            grads = torch.autograd.grad(pose_loss, [omega] + ([shifts] if shifts is not None else []))
            table.adam_step(rows, grads[0], grads[1] if shifts is not None else None, config.pose_lr, config.pose_adam_betas)
        if config.fold_poses_after_batch:
            table.fold(rows)
        rotations = table.rotations(rows).detach()
        shifts = table.shift_px[rows] if config.learn_shifts else None
        predicted = render_fourier(state.modules["decoder"](rotations), ctf, shifts)
        data = per_image_loss(predicted, observed, runtime.mask, config.loss, config.noise_variance).mean()
        total = ctx.step(state.optimizers["model"], {"data": data})
        runtime.record(config.eval_pose_images, batch["particle_index"], rotations, batch)
        return {"loss": total.item()}

    @torch.no_grad()
    def _best_head_poses(
        self, state: TrainState, config: CryoSpinConfig, ctx: TrainContext
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """One in-order pass over this worker's images: particle_index, best-head rotation (and shift; with
        ``heads+search`` the global search's pose where it explains the image better), the winning head, and the
        true rotation (kept for scoring only)."""
        encoder = state.unwrapped("encoder")
        training = encoder.training
        encoder.eval()
        volume = state.unwrapped("decoder", HartleyVolume).hartley()
        out: dict[str, list[torch.Tensor]] = {"index": [], "rotation": [], "shift": [], "winner": [], "true": []}
        for batch in iter_owned_batches(state.runtime.chunks, ctx.runner.batch_size, ctx.device):
            rotations, shifts = encoder(batch["image"])
            per_head = self.head_losses(
                lambda r: slice_volume_fourier(volume, r), rotations, shifts, batch, state.runtime.mask, config, ctx
            )
            head_loss, winner = per_head.min(dim=1)
            pick = torch.arange(len(winner), device=winner.device)
            chosen = rotations[pick, winner]
            if config.pose_proposals == "heads+search":
                searched, better = self._search_if_better(volume, batch, head_loss, state.runtime.mask, config, ctx)
                chosen = torch.where(better[:, None, None], searched, chosen)
            out["index"].append(batch["particle_index"])
            out["rotation"].append(chosen)
            out["shift"].append(shifts[pick, winner] if shifts is not None else torch.zeros(len(winner), 2))
            out["winner"].append(winner)
            out["true"].append(euler_relion_to_matrix(batch["rot_deg"], batch["tilt_deg"], batch["psi_deg"]))
        encoder.train(training)
        joined = {k: torch.cat(v) for k, v in out.items()}
        shifts = joined["shift"] if config.learn_shifts else None
        return joined["index"], joined["rotation"], shifts, joined["winner"], joined["true"]

    def _search_if_better(
        self,
        volume: torch.Tensor,
        batch: dict[str, torch.Tensor],
        loss: torch.Tensor,
        mask: torch.Tensor,
        config: CryoSpinConfig,
        ctx: TrainContext,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A global search's pose (B, 3, 3) of every image against ``volume`` (Hartley), and where its loss is below
        ``loss`` (B,), the loss of the pose the image has."""
        problem = self.pose_problem(volume, batch, config, ctx, ctx.manifest.box_px // 2)
        searched, _ = search_poses(
            problem, width=config.search_width, final_level=config.search_final_level, start_level=config.search_level
        )
        search_loss = self.head_losses(
            lambda r: slice_volume_fourier(volume, r), searched[:, None], None, batch, mask, config, ctx
        )[:, 0]
        return searched, search_loss < loss

    def _switch_to_auto_decoding(self, state: TrainState, config: CryoSpinConfig, ctx: TrainContext) -> None:
        """Initialise this worker's pose table from each image's best head (the LR schedule lowers the volume's
        step size from the same epoch on)."""
        table = _pose_table(state)
        index, rotations, shifts, winner, _ = self._best_head_poses(state, config, ctx)
        table.set_poses(table.rows(index), rotations, shifts)
        wins = torch.bincount(winner, minlength=config.n_heads).to(torch.float64)
        if ctx.distributed:
            dist.all_reduce(wins)
        state.extra["head_wins_at_switch"] = wins.cpu().tolist()
        state.extra["switched"] = True

    # ---- evaluation and artifacts ----

    def evaluate(self, state: TrainState, config: CryoSpinConfig, ctx: TrainContext) -> dict[str, float]:
        """Pose error (after global alignment) on the images scored this epoch, head usage, and — every
        ``fsc_every_epochs`` and at the end — FSC resolution of the aligned map against ground truth."""
        runtime: _WorkerRun = state.runtime
        predicted, true = runtime.take_records()
        predicted, true = _gather_cat(predicted, ctx), _gather_cat(true, ctx)
        wins = runtime.head_wins.clone()
        if ctx.distributed:
            dist.all_reduce(wins)
        runtime.head_wins.zero_()
        metrics: dict[str, float] = {}
        if ctx.is_rank_zero and len(predicted):
            # The last epoch's map is scored with every image's pose by test() (the run's final scores).
            with_map = not ctx.is_last_epoch and ctx.epoch_is_due(config.fsc_every_epochs)
            reference = ctx.manifest.ground_truth_map(ctx.dataset_dir) if with_map else None
            density = state.unwrapped("decoder", HartleyVolume).density().cpu()
            evaluation = evaluate_reconstruction(
                density,
                reference,
                ctx.manifest.voxel_size_angstrom,
                predicted,
                true if ctx.manifest.has_poses else None,
                search_level=config.align_search_level,
                symmetry=ctx.manifest.symmetry,
            )
            metrics.update(evaluation.metrics)
            metrics["auto_decoding"] = float(state.extra["switched"])
            if wins.sum() > 0:
                fractions = (wins / wins.sum()).cpu().tolist()
                metrics.update({f"head_{j}_win_fraction": f for j, f in enumerate(fractions)})
        return ctx.broadcast_from_rank_zero(metrics)

    def write_artifacts(self, state: TrainState, config: CryoSpinConfig, ctx: TrainContext, output_dir: Path) -> dict[str, str]:
        """The model file: encoder (with its heads) and Hartley volume."""
        return write_pose_model(output_dir, self.name, state, config, ctx) if ctx.is_rank_zero else {}

    def test(
        self, state: TrainState, config: CryoSpinConfig, ctx: TrainContext, output_dir: Path
    ) -> tuple[dict[str, float], dict[str, str]]:
        """The final scores with every image's pose (the aligned map's FSC, the pose error) and the files that
        show them: map.mrc, map_aligned.mrc, fsc.csv/png, poses.star and head_usage.csv/png."""
        if state.extra["switched"]:
            table = _pose_table(state)
            index = table.particle_index
            rotations = table.rotations(torch.arange(len(table), device=ctx.device))
            shifts = table.shift_px if config.learn_shifts else None
            true = _true_rotations(state.runtime.chunks, index, ctx)
            wins = torch.tensor(state.extra["head_wins_at_switch"], dtype=torch.float64)
            usage_label = "at the switch to auto-decoding"
        else:
            index, rotations, shifts, winner, true = self._best_head_poses(state, config, ctx)
            wins = torch.bincount(winner, minlength=config.n_heads).to(torch.float64)
            if ctx.distributed:
                dist.all_reduce(wins)
            usage_label = "after the last epoch"
        gathered = {
            name: _gather_cat(value.detach().cpu(), ctx)
            for name, value in {"index": index, "rotation": rotations, "true": true}.items()
        }
        gathered_shifts = _gather_cat(shifts.detach().cpu(), ctx) if shifts is not None else None
        metrics: dict[str, float] = {}
        artifacts: dict[str, str] = {}
        if ctx.is_rank_zero:
            metrics, artifacts = self._final_scores(state, config, ctx, output_dir, gathered, gathered_shifts)
            artifacts.update(_write_head_usage(output_dir, wins, usage_label))
        return ctx.broadcast_from_rank_zero(metrics), artifacts

    def _final_scores(
        self,
        state: TrainState,
        config: CryoSpinConfig,
        ctx: TrainContext,
        output_dir: Path,
        gathered: dict[str, torch.Tensor],
        gathered_shifts: torch.Tensor | None,
    ) -> tuple[dict[str, float], dict[str, str]]:
        density = state.unwrapped("decoder", HartleyVolume).density().cpu()
        evaluation = evaluate_reconstruction(
            density,
            ctx.manifest.ground_truth_map(ctx.dataset_dir),
            ctx.manifest.voxel_size_angstrom,
            gathered["rotation"],
            gathered["true"] if ctx.manifest.has_poses else None,
            search_level=config.align_search_level,
            symmetry=ctx.manifest.symmetry,
        )
        voxel = ctx.manifest.voxel_size_angstrom
        artifacts = write_reconstruction_artifacts(
            output_dir,
            density,
            ctx.manifest,
            evaluation,
            gathered["index"].numpy(),
            gathered["rotation"],
            None if gathered_shifts is None else -gathered_shifts * voxel,  # RELION origin = −shift
        )
        return dict(evaluation.metrics), artifacts


def _pose_table(state: TrainState) -> PoseTable:
    """This worker's pose table (``state.sharded["pose_table"]``, set by ``setup``)."""
    table = state.sharded["pose_table"]
    if not isinstance(table, PoseTable):
        raise TypeError(f"sharded state 'pose_table' is a {type(table).__name__}, not a PoseTable")
    return table


def _true_rotations(chunks: list[RowChunk], index: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
    """Ground-truth rotations of this worker's images in table order (read for scoring only)."""
    angles = read_owned_columns(chunks, ["particle_index", "rot_deg", "tilt_deg", "psi_deg"])
    order = np.argsort(angles["particle_index"], kind="stable")
    if not np.array_equal(angles["particle_index"][order], index.cpu().numpy()):
        raise RuntimeError(f"rank {ctx.rank}: the pose table does not hold exactly this worker's images")
    rot, tilt, psi = (torch.from_numpy(angles[name][order].astype(np.float32)) for name in ("rot_deg", "tilt_deg", "psi_deg"))
    return euler_relion_to_matrix(rot, tilt, psi)


def _gather_cat(value: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
    """Concatenate a CPU tensor over ranks (rank order); for end-of-run and scoring-sized data only."""
    if not ctx.distributed:
        return value
    parts: list[torch.Tensor | None] = [None] * ctx.world_size
    dist.all_gather_object(parts, value)
    return torch.cat([p for p in parts if p is not None])


def _write_head_usage(output_dir: Path, wins: torch.Tensor, label: str) -> dict[str, str]:
    """``head_usage.csv/png``: how many images each head won (the paper's Supp. F specialisation)."""
    counts = wins.numpy()
    fractions = counts / max(counts.sum(), 1)
    table = pd.DataFrame({"head": np.arange(len(counts)), "images_won": counts.astype(np.int64), "fraction": fractions})
    csv_path = output_dir / "head_usage.csv"
    table.to_csv(csv_path, index=False)
    fig = agg_figure(figsize=(5, 3.2), dpi=120)
    ax = fig.subplots()
    ax.bar(table["head"], table["fraction"])
    ax.set_xlabel("head")
    ax.set_ylabel("fraction of images won")
    ax.set_title(f"winner-takes-all head usage {label}", fontsize=9)
    fig.tight_layout()
    png_path = output_dir / "head_usage.png"
    fig.savefig(png_path)
    return {"head_usage_csv": str(csv_path.resolve()), "head_usage_png": str(png_path.resolve())}
