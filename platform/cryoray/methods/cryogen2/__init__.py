"""CryoGEN-II: cryo-ET missing-wedge restoration by a 3D UNet++ generator, a wedge-aware masked loss and a GAN.

Training is self-supervised, IsoNet-style: the ground truth is never seen. Each step takes a batch of
subtomograms (extracted once inside a density/std mask, contrast-inverted if asked, 5–95 % normalised;
:mod:`cryoray.data.subtomograms`) and, per subtomogram, one of the 20 cube rotations that move the X–Z wedge,
the artificial canonical wedge on the rotated input, and wedge-shaped noise ``σ ~ U(0, 1] × max_noise``. The
generator (:class:`cryoray.nn.unetpp.UNetPlusPlus3d`, 4–96 % input normalisation inside) is trained on
``L_measured + wedge_weight · L_wedge + λ · L_adv`` (:mod:`.losses`). Adam (lr 4e-4) with linear warm-up
over the first 10 % of the steps, then linear decay to 0; λ constant in the first epoch, then
``λ_e = λ · (E − e) / E`` for epoch ``e ≥ 1`` of ``E``. The default peak learning rate is 2e-3, not the paper's
4e-4: the paper trains a 10 M-parameter net for 10–20 epochs of 300–490 cubes of 80³ on GPUs, our CPU budgets
are ~60 steps of a 0.3 M net on 24³ cubes, and at 4e-4 the net has not yet reached the input's quality by then
(``jobs/configs/cryogen2-paper.yaml`` has the paper's values).

The adversarial term ("barycenter" updates; the main text that defines them is not available). Our reading,
``adversarial: barycenter``: a real subtomogram seen in cube orientation ``o`` carries the wedge ``R_o M``;
the critic (the same UNet++ with its output map averaged to one realism logit) compares real subtomograms in
random orientations with generator outputs seen through the *same* orientations' wedges (AmbientGAN-style:
fakes pass through the measurement operator). The generator's distribution is thereby pulled to the one whose
views through every wedge orientation match the data in that orientation — the common centre (barycenter)
of the orientation-wise data distributions — which needs a batch that mixes orientations (the paper's 8–10).
Real and fake of a pair come from different subtomograms (the batch rolled by one). ``adversarial: off`` is
the same generator with the masked loss only (IsoNet/DeepDeWedge-style), the paper's comparison. A critic
that compared outputs with the wedge-carrying targets directly would punish wedge filling, so it is not offered.

Evaluation against the wedge-free ground truth of simulated tomograms (validation each epoch, test at the
end): FSC over the whole volume, restricted to the missing wedge and to the measured region (mean over
shells), PSNR and SSIM after the least-squares affine fit of each volume to the truth (the network works in
normalised units); the same for the input as the baseline. Artifacts: ``model.safetensors`` (for ``apply``), the
restored test tomograms (``.mrc``, tiled and stitched), subtomogram ``.mrc`` triples, XY/XZ/YZ central-slice
PNGs (input / output / ground truth) and FSC curves.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from cryoray.data.patches import split_entries
from cryoray.data.streams import Stream
from cryoray.data.subtomograms import (
    SubtomogramSource,
    extract_subtomograms,
    subtomogram_source,
    subtomogram_stream,
)
from cryoray.io.figures import write_fsc_curves
from cryoray.io.manifest import DatasetManifest
from cryoray.io.models import MODEL_FILE, write_model_file
from cryoray.io.mrc import read_mrc, write_mrc
from cryoray.methods.cryogen2.apply import restore_volume
from cryoray.methods.cryogen2.figures import write_central_slices
from cryoray.methods.cryogen2.losses import (
    critic_logits,
    discriminator_loss,
    generator_adversarial_loss,
    masked_reconstruction_terms,
    rotated_wedge_masks,
    training_sample,
)
from cryoray.nn.precision import Precision, autocast
from cryoray.nn.unetpp import UNetPlusPlus3d
from cryoray.physics import (
    apply_fourier_mask,
    cube_rotations,
    fourier_shell_correlation,
    mean_shell_correlation,
    missing_wedge_region,
    psnr,
    rotate_volume_90,
    sphere_mask,
    ssim,
    wedge_changing_rotations,
)
from cryoray.train.context import TrainContext
from cryoray.train.method import Method, TrainState

Adversarial = Literal["barycenter", "off"]


class CryoGEN2Config(BaseModel):
    """Hyperparameters of CryoGEN-II (paper values where the CPU budget allows; paper: jobs/configs/cryogen2-paper.yaml)."""

    model_config = ConfigDict(extra="forbid")
    adversarial: Adversarial = Field(
        "barycenter", description="barycenter (the GAN, see the module doc) | off (masked loss only)"
    )
    cube_px: int = Field(
        24, ge=16, description="subtomogram edge in voxels (paper 80/96); a multiple of 2**(levels-1), >= 2**levels"
    )
    channels: list[PositiveInt] = Field([8, 16, 16, 32], min_length=2, description="UNet++ widths per level (paper 4 levels)")
    critic_channels: list[PositiveInt] | None = Field(
        [4, 8, 8, 16], min_length=2, description="critic UNet++ widths, same number of levels; None = the generator's"
    )
    train_subtomograms: int = Field(256, ge=1, description="fixed set of training cubes extracted once (paper 300–490)")
    val_subtomograms: int = Field(8, ge=1, description="validation cubes evaluated every epoch (needs ground truth)")
    test_subtomograms: int = Field(16, ge=1, description="held-out cubes for the final metrics")
    extraction_seed: int = Field(0, description="seed of the cube positions")
    invert_contrast: bool | None = Field(
        None, description="negate tomograms (protein dark → bright); None = yes unless the dataset is a simulation without CTF"
    )
    mask_patch_px: int = Field(4, ge=1, description="density/std mask window (IsoNet 4)")
    mask_density_percentage: float = Field(50.0, gt=0, le=100, description="keep the top % by local density (IsoNet 50)")
    mask_std_percentage: float = Field(50.0, gt=0, le=100, description="keep the top % by local std (IsoNet 50)")
    tilt_range_deg: tuple[float, float] | None = Field(
        None, description="tilt range of the data; None = the dataset's recipe, else ±60°"
    )
    wedge_weight: float = Field(2.0, ge=0, description="weight of the wedge-filling term of the masked loss (DeepDeWedge 2)")
    max_noise: float = Field(0.1, ge=0, description="noise std at σ = 1, in normalised units (σ ~ U(0,1] × this, per step)")
    adversarial_weight: float = Field(0.01, ge=0, description="λ of the adversarial term in epoch 1 (then linear decay)")
    learning_rate: float = Field(2e-3, gt=0, description="Adam peak learning rate (paper 4e-4; see the module doc)")
    precision: Precision = Field("fp32", description="training forward passes of both networks: fp32 | bf16 | auto")
    critic_learning_rate: float | None = Field(None, gt=0, description="critic's Adam peak lr; None = learning_rate")
    warmup_fraction: float = Field(0.1, ge=0, lt=1, description="linear warm-up over this fraction of the steps (paper 10 %)")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas of both networks")
    inference_overlap_px: int = Field(8, ge=0, description="overlap of tiles when restoring a whole tomogram")
    inference_batch_size: int = Field(4, ge=1)
    restore_test_tomograms: bool = Field(True, description="write the restored test tomograms (.mrc, tiled)")

    @model_validator(mode="after")
    def _consistent(self) -> CryoGEN2Config:
        multiple = 2 ** (len(self.channels) - 1)
        if self.cube_px % multiple or self.cube_px < 2 * multiple:
            raise ValueError(
                f"cube_px {self.cube_px} must be a multiple of {multiple} and at least {2 * multiple} "
                f"for {len(self.channels)} levels"
                " (instance norm needs more than one voxel at the coarsest level)"
            )
        if self.critic_channels is not None and len(self.critic_channels) != len(self.channels):
            raise ValueError("critic_channels must have as many levels as channels (the same architecture)")
        if self.inference_overlap_px >= self.cube_px:
            raise ValueError(f"inference_overlap_px {self.inference_overlap_px} must be smaller than cube_px {self.cube_px}")
        if self.tilt_range_deg is not None and not -90 <= self.tilt_range_deg[0] < self.tilt_range_deg[1] <= 90:
            raise ValueError("tilt_range_deg: need -90 <= min < max <= 90")
        return self


def tilt_range(config: CryoGEN2Config, manifest: DatasetManifest) -> tuple[float, float]:
    """The data's tilt range: the config's, else the simulation recipe's, else ±60°."""
    if config.tilt_range_deg is not None:
        return config.tilt_range_deg
    low, high = manifest.provenance.get("tilt_range_deg", (-60.0, 60.0))
    return float(low), float(high)


def inverts_contrast(config: CryoGEN2Config, manifest: DatasetManifest) -> bool:
    """Real and CTF-simulated tomograms show protein dark; a simulation without CTF shows it bright."""
    if config.invert_contrast is not None:
        return config.invert_contrast
    simulated_without_ctf = "ctf" in manifest.provenance and manifest.provenance["ctf"] is None
    return not simulated_without_ctf


@functools.lru_cache(maxsize=8)
def wedge_geometry(box: int, tilt_range_deg: tuple[float, float], device: str) -> dict[str, torch.Tensor]:
    """The rotations and their rotated wedge masks, computed once per worker (exact, see `losses`)."""
    changing, all_cube = wedge_changing_rotations(), cube_rotations()
    return {
        "rotations": changing,
        "rotated_masks": rotated_wedge_masks(box, changing, tilt_range_deg, device),
        "input_mask": rotated_wedge_masks(box, all_cube[:1], tilt_range_deg, device)[0],
        "cube_rotations": all_cube,
        "cube_masks": rotated_wedge_masks(box, all_cube, tilt_range_deg, device),
        "wedge_region": missing_wedge_region(box, *tilt_range_deg, device=device),
    }


def adversarial_lambda(config: CryoGEN2Config, epoch: int, epochs: int) -> float:
    """λ constant in the first epoch, then linear decay: ``λ (E − e) / E`` in epoch ``e ≥ 1``."""
    if config.adversarial == "off":
        return 0.0
    return config.adversarial_weight if epoch == 0 else config.adversarial_weight * (epochs - epoch) / epochs


def warmup_linear_decay(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    """LR factor: linear warm-up over ``warmup_fraction`` of the steps, then linear decay to 0 at the last step."""
    warmup = max(1, round(total_steps * warmup_fraction)) if warmup_fraction > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def critic_views(
    output: torch.Tensor, subtomograms: torch.Tensor, geometry: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Barycenter views: per pair an orientation ``o`` of the 24; real = another subtomogram rotated by ``R_o``
    (its wedge becomes ``R_o M``), fake = the generator's output through the wedge ``R_o M``."""
    batch = output.shape[0]
    orientation = torch.randint(len(geometry["cube_rotations"]), (batch,)).tolist()  # host indices: no device copy
    partners = subtomograms.roll(1, dims=0)
    real = torch.stack([rotate_volume_90(v, geometry["cube_rotations"][o]) for v, o in zip(partners, orientation)])
    fake = apply_fourier_mask(output, torch.stack([geometry["cube_masks"][o] for o in orientation]))
    return real, fake


def _affine_fit(volume: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``a · volume + b`` with a, b minimising the squared error to ``reference``, per sample (B, D, D, D)."""
    v = volume.flatten(1).double()
    r = reference.flatten(1).double()
    vc, rc = v - v.mean(1, keepdim=True), r - r.mean(1, keepdim=True)
    a = (vc * rc).sum(1, keepdim=True) / (vc * vc).sum(1, keepdim=True).clamp_min(1e-20)
    return (a * vc + r.mean(1, keepdim=True)).reshape(volume.shape)


def reconstruction_metrics(volumes: torch.Tensor, clean: torch.Tensor, wedge_region: torch.Tensor) -> dict[str, Any]:
    """Per-sample curves and means of FSC (whole, in the wedge, in the measured region), PSNR and SSIM vs the truth.

    The FSCs are of mean-subtracted volumes under a soft spherical mask (cosine edge of a quarter box): the hard
    edges of a cube crop would spread the strong measured low frequencies into the wedge and hide what a method
    recovers there. PSNR and SSIM use the whole cube.
    """
    volumes, clean = volumes.double(), clean.double()
    box, edge_px = volumes.shape[-1], max(2.0, volumes.shape[-1] / 4)
    window = sphere_mask(box, box / 2 - edge_px, 3, soft_edge_px=edge_px, dtype=torch.float64, device=volumes.device)

    def masked(v: torch.Tensor) -> torch.Tensor:
        return (v - v.mean(dim=(-3, -2, -1), keepdim=True)) * window

    frequency, fsc = fourier_shell_correlation(masked(volumes), masked(clean))
    _, fsc_wedge = fourier_shell_correlation(masked(volumes), masked(clean), region=wedge_region)
    _, fsc_measured = fourier_shell_correlation(masked(volumes), masked(clean), region=1 - wedge_region)
    fitted = _affine_fit(volumes, clean)
    data_range = (clean.flatten(1).amax(1) - clean.flatten(1).amin(1)).clamp_min(1e-12)
    psnr_db = torch.stack([psnr(f, c, float(r)) for f, c, r in zip(fitted, clean, data_range)])
    scores = {
        "fsc_mean": float(mean_shell_correlation(fsc).mean()),
        "fsc_wedge_mean": float(mean_shell_correlation(fsc_wedge).mean()),
        "fsc_measured_mean": float(mean_shell_correlation(fsc_measured).mean()),
        "psnr_db": float(psnr_db.mean()),
    }
    if volumes.shape[-1] >= 11:  # the SSIM window is 11 voxels
        scores["ssim"] = float(torch.stack([ssim(f, c, float(r), ndim=3) for f, c, r in zip(fitted, clean, data_range)]).mean())
    per_sample = {"fsc": fsc, "fsc_wedge": fsc_wedge, "fsc_measured": fsc_measured}
    curves = {"frequency": frequency, **{name: curve.nanmean(0) for name, curve in per_sample.items()}}
    return {"scores": scores, "curves": curves}


@torch.no_grad()
def restore_batch(generator: torch.nn.Module, subtomograms: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The generator's output for (N, D, D, D) subtomograms, in chunks."""
    generator.eval()
    return torch.cat([generator(chunk) for chunk in subtomograms.split(batch_size)])


class CryoGEN2(Method[CryoGEN2Config]):
    """Cryo-ET missing-wedge restoration with a UNet++ GAN and a wedge-aware masked loss (see the module docstring)."""

    name = "cryogen2"
    key_metrics = {"val_fsc_wedge_mean": "max", "val_fsc_mean": "max"}
    config_schema = CryoGEN2Config
    dataset_kind = "tomograms"
    default_preset = {"train": {"epochs": 4, "batch_size": 8, "log_every_steps": 4}}
    smoke_preset = {
        "num_workers": 1,
        "train": {"epochs": 2, "batch_size": 4, "log_every_steps": 2},
        "method": {
            "cube_px": 16,
            "channels": [4, 8, 8, 16],
            "critic_channels": [4, 4, 8, 8],
            "train_subtomograms": 24,
            "val_subtomograms": 4,
            "test_subtomograms": 4,
            "inference_overlap_px": 4,
        },
    }

    def epoch_items(self, config: CryoGEN2Config, manifest: DatasetManifest) -> int:
        return config.train_subtomograms

    def datasets(self, dataset_dir: Path, manifest: DatasetManifest, config: CryoGEN2Config, seed: int = 0) -> dict[str, Stream]:
        source = self._source(dataset_dir, manifest, config, "train")
        return {"train": subtomogram_stream(source)}

    @overload
    @staticmethod
    def _source(
        dataset_dir: Path, manifest: DatasetManifest, config: CryoGEN2Config, split: Literal["train"]
    ) -> SubtomogramSource: ...

    @overload
    @staticmethod
    def _source(dataset_dir: Path, manifest: DatasetManifest, config: CryoGEN2Config, split: str) -> SubtomogramSource | None: ...

    @staticmethod
    def _source(dataset_dir: Path, manifest: DatasetManifest, config: CryoGEN2Config, split: str) -> SubtomogramSource | None:
        """The split's cubes; None for an evaluation split that is empty or lacks ground truth (never for train)."""
        entries = [t for t in manifest.tomograms if t.split == split]
        if split != "train" and not all(t.clean for t in entries):
            return None  # evaluation needs the ground truth
        if not entries:
            if split == "train":
                split_entries(manifest, "train")  # raises the standard error naming the empty split
            return None
        count = {"train": config.train_subtomograms, "val": config.val_subtomograms, "test": config.test_subtomograms}[split]
        return subtomogram_source(
            dataset_dir,
            entries,
            count,
            config.cube_px,
            inverts_contrast(config, manifest),
            seed=config.extraction_seed + {"train": 0, "val": 1, "test": 2}[split],
            mask_patch_px=config.mask_patch_px,
            density_percentage=config.mask_density_percentage,
            std_percentage=config.mask_std_percentage,
        )

    def setup(self, config: CryoGEN2Config, manifest: DatasetManifest, ctx: TrainContext) -> TrainState:
        generator = UNetPlusPlus3d(config.channels).to(ctx.device)
        modules: dict[str, torch.nn.Module] = {"generator": generator}
        betas = config.adam_betas
        optimizers: dict[str, torch.optim.Optimizer] = {
            "generator": torch.optim.Adam(generator.parameters(), lr=config.learning_rate, betas=betas)
        }
        if config.adversarial != "off":
            critic = UNetPlusPlus3d(config.critic_channels or config.channels, rescale_output=False).to(ctx.device)
            modules["critic"] = critic
            optimizers["critic"] = torch.optim.Adam(
                critic.parameters(), lr=config.critic_learning_rate or config.learning_rate, betas=betas
            )
        schedule = warmup_linear_decay(ctx.total_steps, config.warmup_fraction)
        schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = {
            name: torch.optim.lr_scheduler.LambdaLR(opt, schedule) for name, opt in optimizers.items()
        }
        extra = {
            "invert_contrast": inverts_contrast(config, manifest),
            "voxel_size_angstrom": manifest.voxel_size_angstrom,
            "tilt_range_deg": tilt_range(config, manifest),
        }
        # runtime: the evaluation splits' fixed cubes by split, extracted on first use by this worker.
        return TrainState(modules=modules, optimizers=optimizers, schedulers=schedulers, extra=extra, runtime={})

    def train_step(
        self, state: TrainState, batch: dict[str, torch.Tensor], config: CryoGEN2Config, ctx: TrainContext
    ) -> dict[str, float]:
        subtomograms = batch["subtomogram"]
        geometry = wedge_geometry(config.cube_px, tuple(state.extra["tilt_range_deg"]), str(ctx.device))
        sample = training_sample(
            subtomograms, geometry["rotations"], geometry["rotated_masks"], geometry["input_mask"], config.max_noise
        )
        with autocast(config.precision, ctx.device):
            output = state.modules["generator"](sample["input"])
        output = output.float()  # the masked loss and the wedge filters run in fp32
        losses = masked_reconstruction_terms(output, sample["target"], sample["target_mask"], geometry["input_mask"])
        weights = {"masked_wedge": config.wedge_weight}
        metrics: dict[str, float] = {}
        uses_critic = "critic" in state.modules
        if uses_critic:
            lam = adversarial_lambda(config, ctx.epoch, ctx.runner.epochs)
            real, fake = critic_views(output, subtomograms, geometry)
            critic = state.unwrapped("critic")  # unwrapped: the generator step must not run the critic's DDP hooks
            critic.requires_grad_(False)
            with autocast(config.precision, ctx.device):
                fake_logits = critic_logits(critic, fake)
            losses["adversarial"] = generator_adversarial_loss(fake_logits.float())
            critic.requires_grad_(True)
            weights["adversarial"] = lam
            metrics["lambda"] = lam
        total = ctx.step(state.optimizers["generator"], losses, weights)
        if uses_critic:
            with autocast(config.precision, ctx.device):
                logits = critic_logits(state.modules["critic"], torch.cat([real, fake.detach()])).float()  # one forward for DDP
            critic_loss = discriminator_loss(logits[: len(real)], logits[len(real) :])
            ctx.step(state.optimizers["critic"], {"critic": critic_loss})
            metrics["critic"] = float(critic_loss.detach())
            metrics["critic_real_prob"] = float(torch.sigmoid(logits[: len(real)]).mean().detach())
        metrics["learning_rate"] = state.optimizers["generator"].param_groups[0]["lr"]
        metrics.update(
            {
                "loss": float(total),
                **{k: float(v.detach()) for k, v in losses.items()},
                "noise_sigma": float(sample["sigma"].mean()),
            }
        )
        return metrics

    def _evaluation_set(self, state: TrainState, ctx: TrainContext, config: CryoGEN2Config, split: str) -> dict[str, Any] | None:
        """The split's fixed cubes with their ground truth, extracted once per worker (kept in ``state.runtime``)."""
        if split not in state.runtime:
            source = self._source(ctx.dataset_dir, ctx.manifest, config, split)
            cubes = None if source is None else extract_subtomograms(np.arange(len(source)), source, with_clean=True)
            state.runtime[split] = (
                None if cubes is None else {"source": source, **{k: torch.from_numpy(v) for k, v in cubes.items()}}
            )
        return state.runtime[split]

    def _scores(
        self, state: TrainState, config: CryoGEN2Config, ctx: TrainContext, split: str, prefix: str
    ) -> tuple[dict[str, float], dict[str, Any]]:
        cubes = self._evaluation_set(state, ctx, config, split)
        if cubes is None:
            return {}, {}
        geometry = wedge_geometry(config.cube_px, tuple(state.extra["tilt_range_deg"]), "cpu")
        output = restore_batch(
            state.unwrapped("generator"), cubes["subtomogram"].to(ctx.device), config.inference_batch_size
        ).cpu()
        restored = reconstruction_metrics(output, cubes["clean"], geometry["wedge_region"])
        baseline = reconstruction_metrics(cubes["subtomogram"], cubes["clean"], geometry["wedge_region"])
        scores = {f"{prefix}{k}": v for k, v in restored["scores"].items()}
        scores |= {f"{prefix}input_{k}": v for k, v in baseline["scores"].items()}
        return scores, {"output": output, "cubes": cubes, "restored": restored, "baseline": baseline}

    def evaluate(self, state: TrainState, config: CryoGEN2Config, ctx: TrainContext) -> dict[str, float]:
        return ctx.broadcast_from_rank_zero(self._scores(state, config, ctx, "val", "val_")[0] if ctx.is_rank_zero else None)

    def test(
        self, state: TrainState, config: CryoGEN2Config, ctx: TrainContext, output_dir: Path
    ) -> tuple[dict[str, float], dict[str, str]]:
        """On rank 0: held-out metrics, FSC curves, subtomogram and whole-tomogram reconstructions, slice figures."""
        if not ctx.is_rank_zero:
            return {}, {}
        scores, detail = self._scores(state, config, ctx, "test", "test_")
        voxel = ctx.manifest.voxel_size_angstrom
        artifacts: dict[str, str] = {}
        if detail:
            restored, baseline = detail["restored"]["curves"], detail["baseline"]["curves"]
            curves = {
                f"{who}_{kind}": c[kind].numpy()
                for who, c in (("input", baseline), ("output", restored))
                for kind in ("fsc", "fsc_wedge")
            }
            artifacts |= write_fsc_curves(
                output_dir,
                restored["frequency"].numpy(),
                curves,
                voxel,
                stem="fsc_test",
                ylabel="FSC against ground truth",
                dashed=[name for name in curves if name.startswith("input")],
            )
            folder = output_dir / "subtomograms"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(min(2, len(detail["output"]))):
                triple = {
                    "input": detail["cubes"]["subtomogram"][i],
                    "output": detail["output"][i],
                    "ground truth": detail["cubes"]["clean"][i],
                }
                for name, volume in triple.items():
                    path = write_mrc(folder / f"test_{i:03d}_{name.replace(' ', '_')}.mrc", volume.numpy(), voxel, overwrite=True)
                    artifacts[f"subtomogram_{i}_{name.replace(' ', '_')}"] = str(path)
                png = write_central_slices(
                    folder / f"test_{i:03d}_slices.png", {k: v.numpy() for k, v in triple.items()}, overwrite=True
                )
                artifacts[f"subtomogram_{i}_slices"] = str(png)
        if config.restore_test_tomograms:
            artifacts |= self._restore_tomograms(state, config, ctx, output_dir)
        return scores, artifacts

    def _restore_tomograms(
        self, state: TrainState, config: CryoGEN2Config, ctx: TrainContext, output_dir: Path
    ) -> dict[str, str]:
        folder = output_dir / "tomograms"
        folder.mkdir(parents=True, exist_ok=True)
        artifacts = {}
        for entry in (t for t in ctx.manifest.tomograms if t.split == "test"):
            tomogram = read_mrc(ctx.dataset_dir / entry.tomogram)
            restored = restore_volume(
                state.unwrapped("generator"),
                tomogram.data,
                state.extra["invert_contrast"],
                config.cube_px,
                config.inference_overlap_px,
                config.inference_batch_size,
                ctx.device,
            )
            path = write_mrc(folder / f"{entry.name}_cryogen2.mrc", restored, tomogram.voxel_size_angstrom, overwrite=True)
            artifacts[f"tomogram_{entry.name}"] = str(path)
            panels = {"input": tomogram.data, "output": restored}
            if entry.clean:
                panels["ground truth"] = read_mrc(ctx.dataset_dir / entry.clean).data
            png = write_central_slices(folder / f"{entry.name}_slices.png", panels, overwrite=True)
            artifacts[f"tomogram_{entry.name}_slices"] = str(png)
        return artifacts

    def write_artifacts(self, state: TrainState, config: CryoGEN2Config, ctx: TrainContext, output_dir: Path) -> dict[str, str]:
        if not ctx.is_rank_zero:
            return {}
        path = write_model_file(
            output_dir / MODEL_FILE,
            self.name,
            {"generator": state.unwrapped("generator")},
            {
                "config": config.model_dump(mode="json"),
                "voxel_size_angstrom": ctx.manifest.voxel_size_angstrom,
                "invert_contrast": state.extra["invert_contrast"],
                "tilt_range_deg": list(state.extra["tilt_range_deg"]),
            },
        )
        return {"model": str(path.resolve())}
