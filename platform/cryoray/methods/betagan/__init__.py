"""(α,β)-GAN robust denoiser for 2D particle images (Gu, Xian, Unarta & Yao; supplement), with its baselines.

Paired training on (noisy y, clean x) images: the generator G (a ResNet autoencoder) minimises
``adversarial(D(G(y))) + λ·‖G(y) − x‖₁`` and the discriminator D separates clean images from G's outputs. The
adversarial loss is one of (:mod:`cryoray.methods.betagan.losses`): the (α,β) proper scoring rule (any α, β,
negative included; (0,0) = JS-GAN log score, (1,1) = Brier), ``js`` (JS-GAN from logits), ``wgan_gp``; or none:
``l2_ae`` / ``l1_ae`` train G alone on the ℓ2 / ℓ1 reconstruction loss (the supplement's autoencoder baselines).

Robustness experiments use the supplement's Huber model: a fraction ε of the training pairs has its clean image
(the GAN's "real" sample and the ℓ1 target) replaced by an outlier ``contamination_kind``: ``noise`` (white noise
of the image's own mean and std: junk), ``wrong_particle`` (another particle's clean image: a mismatched pair) or
``heavy_tailed`` (the clean image plus Cauchy noise). Which pairs are outliers is fixed per particle index (a
hash), so it does not change between epochs or workers.

Choices where the supplement is silent (all settings, logged to MLflow with the config):
- every noisy image is standardised (zero mean, unit std) and its clean partner put in the same frame, so the model
  does not depend on a dataset's intensity scale (the denoise mode applies the same transform to user images);
- networks (:mod:`cryoray.methods.betagan.networks`) and Adam (β₁ = 0.5); one D step per G step;
- δ = 1e-4 in the (α,β) coefficients; WGAN-GP penalty weight 10 (Gulrajani et al.);
- data split by particle index: the last ``test_images`` rows are the held-out test set, the ``val_images`` rows
  before them the per-epoch validation set (the sweeps' metric), the rest trains;
- metrics on per-image [0, 1]-scaled images (:mod:`cryoray.methods.betagan.evaluation`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from cryoray.data.particles import particle_stream
from cryoray.data.streams import Stream
from cryoray.errors import CryorayInputError
from cryoray.io.manifest import DatasetManifest
from cryoray.io.models import MODEL_FILE, write_model_file
from cryoray.io.mrc import write_mrc
from cryoray.io.star import write_particles_star
from cryoray.methods.betagan import losses
from cryoray.methods.betagan.evaluation import (
    CLEAN_COLUMN,
    bm3d_denoise,
    denoise_images,
    image_metrics,
    metrics_table,
    nlm_denoise,
    normalise_pair,
    read_split_images,
    summarise,
    write_image_grid,
)
from cryoray.methods.betagan.networks import Architecture, DenoisingAutoencoder, Discriminator
from cryoray.train.context import TrainContext
from cryoray.train.method import Method, TrainState

LossKind = Literal["alpha_beta", "js", "wgan_gp", "l2_ae", "l1_ae"]
ContaminationKind = Literal["noise", "wrong_particle", "heavy_tailed"]
ADVERSARIAL: tuple[str, ...] = ("alpha_beta", "js", "wgan_gp")


class BetaGANConfig(BaseModel):
    """Hyperparameters of the (α,β)-GAN denoiser (see the module docstring for the choices)."""

    model_config = ConfigDict(extra="forbid")
    loss: LossKind = Field("alpha_beta", description="alpha_beta | js | wgan_gp (each + λ·ℓ1) | l2_ae | l1_ae (no GAN)")
    alpha_beta: tuple[float, float] = Field(
        (1.0, 1.0), description="(α, β) of the Beta weight c^(α−1)(1−c)^(β−1); Table 1 best (1,1)"
    )
    delta: float = Field(1e-4, gt=0, lt=0.1, description="δ keeping the (α,β) coefficients finite at D ∈ {0, 1}")
    l1_weight: float = Field(10.0, ge=0, description="λ of the generator's λ·‖G(y) − x‖₁ (Table 3 best 10)")
    gp_weight: float = Field(10.0, ge=0, description="WGAN-GP gradient-penalty weight")
    architecture: Architecture = Field("resnet", description="resnet | plain (supplement note 4: no residual paths)")
    channels: list[PositiveInt] = Field(
        [16, 32, 64], min_length=1, description="generator width per level (stride 2 between levels)"
    )
    residual_blocks: int = Field(2, ge=0, description="conv blocks per level (residual for resnet)")
    discriminator_channels: list[PositiveInt] = Field([16, 32, 64], min_length=1, description="D width per stride-2 conv")
    generator_lr: float = Field(5e-4, gt=0, description="Adam step of G")
    discriminator_lr: float = Field(2e-4, gt=0, description="Adam step of D")
    adam_beta1: float = Field(0.5, ge=0, lt=1)
    contamination_fraction: float = Field(
        0.0, ge=0, lt=0.5, description="Huber ε: fraction of training pairs with an outlier clean image"
    )
    contamination_kind: ContaminationKind = Field("noise", description="noise | wrong_particle | heavy_tailed")
    contamination_seed: int = Field(0, description="which particles are outliers (hash of index and seed)")
    test_images: int = Field(256, ge=2, description="held-out test images (the last particle indices)")
    val_images: int = Field(64, ge=2, description="per-epoch validation images (just before the test block)")
    grid_images: int = Field(8, ge=1, description="images per row of the PNG grid")
    classical_baselines: list[Literal["nlm", "bm3d"]] = Field(
        ["nlm"],
        description="classical denoisers scored on the test set: skimage non-local means, BM3D (PyPI bm3d; 1-3 s/image)",
    )

    @property
    def adversarial(self) -> bool:
        return self.loss in ADVERSARIAL


def outlier_mask(particle_index: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """True for the pairs the Huber model replaces: a fixed hash of (index, seed) below ε (same on all workers/epochs)."""
    if fraction <= 0:
        return torch.zeros(particle_index.shape, dtype=torch.bool, device=particle_index.device)
    key = (particle_index.to(torch.int64) * 2654435761 + seed * 40503 + 12345) % 4294967296
    key = (key * 1103515245 + 12345) % 2147483648
    return key.to(torch.float64) / 2147483648.0 < fraction


def contaminate(
    clean: torch.Tensor, mask: torch.Tensor, kind: ContaminationKind, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Replace the clean images selected by ``mask`` (B,) with outliers of ``kind`` (see the module docstring).

    The random outliers are drawn on the CPU, where ``generator`` lives, so a seed gives the same outliers on every
    device (one host-to-device copy per step, and none when the run has no contamination)."""
    mean = clean.mean(dim=(-2, -1), keepdim=True)
    std = clean.std(dim=(-2, -1), keepdim=True)
    if kind == "noise":
        noise = torch.randn(clean.shape, generator=generator, device="cpu").to(clean)
        outliers = mean + std * noise
    elif kind == "heavy_tailed":
        uniform = torch.rand(clean.shape, generator=generator, device="cpu").to(clean)
        outliers = clean + std * torch.tan(torch.pi * (uniform - 0.5))
    else:
        outliers = torch.roll(clean, 1, dims=0) if len(clean) > 1 else torch.flip(clean, dims=(-1,))
    return torch.where(mask[:, None, None], outliers, clean)


def build_generator(config: BetaGANConfig) -> DenoisingAutoencoder:
    return DenoisingAutoencoder(list(config.channels), config.residual_blocks, config.architecture)


class BetaGAN(Method[BetaGANConfig]):
    """(α,β)-GAN + λ·ℓ1 robust denoiser of particle images (see the module docstring)."""

    name = "betagan"
    key_metrics = {"val_psnr": "max", "val_ssim": "max", "val_mse": "min"}
    config_schema = BetaGANConfig
    dataset_kind = "particles"
    default_preset = {"train": {"epochs": 4, "batch_size": 32, "log_every_steps": 20}}
    smoke_preset = {
        "num_workers": 2,
        "train": {"epochs": 2, "batch_size": 16, "max_steps_per_epoch": 12, "log_every_steps": 4},
        "method": {
            "channels": [8, 16],
            "residual_blocks": 1,
            "discriminator_channels": [8, 16],
            "test_images": 32,
            "val_images": 16,
        },
    }

    # ----- driver side -----------------------------------------------------------------------------------------------

    @staticmethod
    def split_bounds(manifest: DatasetManifest, config: BetaGANConfig) -> tuple[int, int]:
        """(first validation index, first test index): train < val_start <= val < test_start <= test."""
        test_start = manifest.count - config.test_images
        val_start = test_start - config.val_images
        if val_start < 1:
            raise CryorayInputError(
                None,
                "method.test_images + method.val_images",
                f"fewer than the dataset's {manifest.count} images",
                config.test_images + config.val_images,
            )
        return val_start, test_start

    def check_dataset(self, dataset_dir: Path, manifest: DatasetManifest, config: BetaGANConfig) -> None:
        super().check_dataset(dataset_dir, manifest, config)
        if CLEAN_COLUMN not in manifest.columns:
            raise CryorayInputError(
                dataset_dir,
                "columns",
                f"a paired dataset with a {CLEAN_COLUMN!r} column (recipe keep_clean_images: true)",
                sorted(manifest.columns),
            )
        multiple = 2 ** (len(config.channels) - 1)
        if manifest.box_px % multiple:
            raise CryorayInputError(
                dataset_dir,
                "box_px",
                f"a multiple of {multiple} for {len(config.channels)} generator levels",
                manifest.box_px,
            )
        if "bm3d" in config.classical_baselines and importlib.util.find_spec("bm3d") is None:
            raise CryorayInputError(
                None,
                "method.classical_baselines",
                "the bm3d package installed for 'bm3d' (pip install bm3d)",
                "not installed",
            )
        self.split_bounds(manifest, config)

    def datasets(self, dataset_dir: Path, manifest: DatasetManifest, config: BetaGANConfig, seed: int = 0) -> dict[str, Stream]:
        val_start, _ = self.split_bounds(manifest, config)
        train = particle_stream(dataset_dir, manifest, seed=seed, columns=("image", CLEAN_COLUMN, "particle_index"))
        return {"train": dataclasses.replace(train, below=("particle_index", val_start))}

    # ----- worker side -----------------------------------------------------------------------------------------------

    def epoch_items(self, config: BetaGANConfig, manifest: DatasetManifest) -> int:
        return self.split_bounds(manifest, config)[0]

    def setup(self, config: BetaGANConfig, manifest: DatasetManifest, ctx: TrainContext) -> TrainState:
        generator = build_generator(config).to(ctx.device)
        betas = (config.adam_beta1, 0.999)
        modules: dict[str, torch.nn.Module] = {"generator": generator}
        optimizers: dict[str, torch.optim.Optimizer] = {
            "generator": torch.optim.Adam(generator.parameters(), lr=config.generator_lr, betas=betas)
        }
        if config.adversarial:
            discriminator = Discriminator(list(config.discriminator_channels)).to(ctx.device)
            modules["discriminator"] = discriminator
            optimizers["discriminator"] = torch.optim.Adam(discriminator.parameters(), lr=config.discriminator_lr, betas=betas)
        return TrainState(modules=modules, optimizers=optimizers)

    def train_batches(self, state: TrainState, config: BetaGANConfig, ctx: TrainContext):
        return ctx.datasets["train"].iter_torch_batches(
            batch_size=ctx.runner.batch_size,
            dtypes={"image": torch.float32, CLEAN_COLUMN: torch.float32, "particle_index": torch.int64},
            device=ctx.device,
            prefetch_batches=4,
            local_shuffle_buffer_size=ctx.runner.shuffle_buffer_images,
            local_shuffle_seed=ctx.epoch_seed,
        )

    def train_step(
        self, state: TrainState, batch: dict[str, torch.Tensor], config: BetaGANConfig, ctx: TrainContext
    ) -> dict[str, float]:
        noisy, clean, _ = normalise_pair(batch["image"], batch[CLEAN_COLUMN])
        mask = outlier_mask(batch["particle_index"], config.contamination_fraction, config.contamination_seed)
        if config.contamination_fraction > 0:
            clean = contaminate(clean, mask, config.contamination_kind)
        denoised = state.modules["generator"](noisy)
        metrics: dict[str, float] = {"outlier_fraction": float(mask.float().mean())}
        generator_losses: dict[str, torch.Tensor] = {}
        if config.adversarial:
            metrics.update(self._discriminator_step(state, clean, denoised.detach(), config, ctx))
            logits_fake = state.modules["discriminator"](denoised)
            generator_losses["adversarial"] = self._generator_adversarial(logits_fake, config)
        if config.loss == "l2_ae":
            generator_losses["l2"] = torch.mean((denoised - clean) ** 2)
        else:
            weight = 1.0 if config.loss == "l1_ae" else config.l1_weight
            generator_losses["l1"] = weight * torch.mean(torch.abs(denoised - clean))
        total = ctx.step(state.optimizers["generator"], generator_losses)
        metrics["generator_loss"] = float(total)
        metrics.update({f"generator_{k}": float(v.detach()) for k, v in generator_losses.items()})
        return metrics

    @staticmethod
    def _generator_adversarial(logits_fake: torch.Tensor, config: BetaGANConfig) -> torch.Tensor:
        if config.loss == "alpha_beta":
            return losses.beta_generator_loss(logits_fake, *config.alpha_beta, config.delta)
        if config.loss == "js":
            return losses.js_generator_loss(logits_fake)
        return losses.wgan_generator_loss(logits_fake)

    @staticmethod
    def _discriminator_step(
        state: TrainState, real: torch.Tensor, fake: torch.Tensor, config: BetaGANConfig, ctx: TrainContext
    ) -> dict[str, float]:
        """One D step; real, fake (and WGAN-GP interpolates) go through D in one forward pass (one DDP forward)."""
        discriminator = state.modules["discriminator"]
        batch = len(real)
        inputs = [real, fake]
        interpolated: torch.Tensor | None = None
        if config.loss == "wgan_gp":
            weight = torch.rand(batch, 1, 1, device=real.device)
            interpolated = (weight * real + (1 - weight) * fake).requires_grad_(True)
            inputs.append(interpolated)
        outputs = discriminator(torch.cat(inputs))
        logits_real, logits_fake = outputs[:batch], outputs[batch : 2 * batch]
        if config.loss == "alpha_beta":
            terms = {"discriminator": losses.beta_discriminator_loss(logits_real, logits_fake, *config.alpha_beta, config.delta)}
        elif config.loss == "js":
            terms = {"discriminator": losses.js_discriminator_loss(logits_real, logits_fake)}
        else:
            assert interpolated is not None  # wgan_gp, the one loss left: its interpolates were made above
            terms = {
                "discriminator": losses.wgan_critic_loss(logits_real, logits_fake),
                "gradient_penalty": config.gp_weight * losses.gradient_penalty(outputs[2 * batch :], interpolated),
            }
        ctx.step(state.optimizers["discriminator"], terms)
        metrics = {f"d_{k}": float(v.detach()) for k, v in terms.items()}
        if config.loss != "wgan_gp":
            metrics["d_prob_real"] = float(torch.sigmoid(logits_real.detach()).mean())
            metrics["d_prob_fake"] = float(torch.sigmoid(logits_fake.detach()).mean())
        return metrics

    # ----- evaluation and artifacts ---------------------------------------------------------------------------------

    def evaluate(self, state: TrainState, config: BetaGANConfig, ctx: TrainContext) -> dict[str, float]:
        def compute() -> dict[str, float]:
            val_start, test_start = self.split_bounds(ctx.manifest, config)
            split = read_split_images(ctx.dataset_dir, ctx.manifest, val_start, test_start)
            denoised = denoise_images(state.unwrapped("generator"), split["image"], device=ctx.device)
            values = image_metrics(denoised, split[CLEAN_COLUMN])
            return {f"val_{name}": float(np.mean(v)) for name, v in values.items()}

        return ctx.broadcast_from_rank_zero(compute() if ctx.is_rank_zero else None)

    def test(
        self, state: TrainState, config: BetaGANConfig, ctx: TrainContext, output_dir: Path
    ) -> tuple[dict[str, float], dict[str, str]]:
        """On rank 0: denoise the held-out test images, score them (and the baselines), write stack, STAR, grid, CSV."""
        if not ctx.is_rank_zero:
            return {}, {}
        _, test_start = self.split_bounds(ctx.manifest, config)
        split = read_split_images(ctx.dataset_dir, ctx.manifest, test_start, ctx.manifest.count)
        noisy, clean, index = split["image"], split[CLEAN_COLUMN], split["particle_index"]
        denoised = denoise_images(state.unwrapped("generator"), noisy, device=ctx.device)
        estimates = {"noisy": noisy}
        if "nlm" in config.classical_baselines:
            estimates["nlm"] = nlm_denoise(noisy)
        bm3d = bm3d_denoise(noisy) if "bm3d" in config.classical_baselines else None
        if bm3d is not None:
            estimates["bm3d"] = bm3d
        estimates[config.loss] = denoised
        table = metrics_table(clean, estimates, index)
        summary = summarise(table)
        output_dir.mkdir(parents=True, exist_ok=True)
        csv_path = output_dir / "test_metrics.csv"
        table.to_csv(csv_path, index=False)
        summary_path = output_dir / "test_metrics_summary.csv"
        summary.to_csv(summary_path, index=False)
        grid = write_image_grid(output_dir / "denoising_grid.png", {"clean": clean, **estimates}, columns=config.grid_images)
        voxel = ctx.manifest.voxel_size_angstrom
        stack_path = write_mrc(output_dir / "denoised_test.mrcs", denoised, voxel, overwrite=True)
        star_path = write_particles_star(
            output_dir / "denoised_test.star",
            pd.DataFrame(
                {
                    "image_index": np.arange(len(denoised)),
                    "image_path": str(stack_path),
                    "pixel_size_angstrom": voxel,
                    "box_px": ctx.manifest.box_px,
                }
            ),
            overwrite=True,
        )
        metrics: dict[str, float] = {}
        for row in summary.itertuples(index=False):
            label = "denoised" if row.method == config.loss else row.method
            for name in ("mse", "psnr", "ssim"):
                metrics[f"test_{name}_{label}"] = float(getattr(row, f"{name}_mean"))
        files = {
            "test_metrics": csv_path,
            "test_metrics_summary": summary_path,
            "denoising_grid": grid,
            "denoised_stack": stack_path,
            "denoised_star": star_path,
        }
        return metrics, {k: str(Path(v).resolve()) for k, v in files.items()}

    def write_artifacts(self, state: TrainState, config: BetaGANConfig, ctx: TrainContext, output_dir: Path) -> dict[str, str]:
        if not ctx.is_rank_zero:
            return {}
        path = write_model_file(
            output_dir / MODEL_FILE,
            self.name,
            {"generator": state.unwrapped("generator")},
            {
                "config": config.model_dump(mode="json"),
                "pixel_size_angstrom": ctx.manifest.voxel_size_angstrom,
                "box_px": ctx.manifest.box_px,
                "dataset": ctx.manifest.name,
            },
        )
        return {"model": str(path.resolve())}
