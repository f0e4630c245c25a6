"""RobPicker: a 3D U-Net particle picker trained by bi-level meta-learning with label correction and reweighting.

Paper mode (Hosseini et al., Methods). The lower level trains the segmentation U-Net ``I`` by SGD on the
Dice loss of each training patch against its *corrected* label, scaled by a learned weight of that loss;
the upper level trains the label-correction head ``C`` and the reweighting MLP ``R`` so that one SGD step
of ``I`` lowers the Dice loss on a clean, class-balanced validation stream, with the finite-difference
hypergradient of eqs. 12–13 (:mod:`cryoray.nn.bilevel`). Training patches carry sphere labels painted from
(noisy) annotations, validation and test tomograms shape labels. Picks come from sliding-window inference,
argmax per voxel, DBSCAN per class and cluster centres of gravity; F1 by the SHREC hit-box rule and by a
distance tolerance.

Modes for the paper's ablations: ``full`` (LC + DR), ``lc_only``, ``dr_only``, ``supervised`` (DeepFinder-style:
plain Dice on the noisy labels, no meta step).

Choices where the paper is silent (logged as MLflow params through the config):
- meta optimiser Adam (``meta_lr_*``): the hypergradient carries the factor η_I ≈ 1e-4, so plain gradient
  descent would need a learning rate tuned to that scale; Adam is invariant to it;
- one meta step per lower step (``meta_interval`` 1, as eqs. 6–8 alternate), the meta step first so the
  lower step uses the updated ``C`` and ``R``;
- the inner step η_I of eq. 6 defaults to the lower learning rate (the paper calls both "the learning rate");
- ε is ``fd_epsilon / ‖∇_{I'} L_val‖`` (DARTS), i.e. the perturbation has norm ``fd_epsilon``;
- patch statistics: every patch (train, validation and inference tile) is normalised to zero mean, unit std;
- the lower learning rate default is 0.05, not the paper's 1e-4: the paper ran 10,000 SGD iterations of 25
  patches of 64³ on an A100; the CPU budgets of our default and benchmark sets are ~100× smaller and at
  1e-4 the U-Net does not leave its initial state. ``jobs/configs/robpicker-paper.yaml`` has the paper values;
- ``keep_best`` makes the test picks and the model file use the net of the evaluation with the best validation F1
  (model selection on held-out data; off by default);
- ``test_time_flips`` averages the class probabilities of each tile over the four 180° rotations the training
  patches are augmented with (4× the inference cost; off by default);
- ``weight_average_decay`` evaluates, tests and saves an exponential moving average of the segmentation net's
  weights (and batch-norm statistics) instead of the live net (Polyak averaging; off by default): at a constant step
  the live net's picks jump between evaluations;
- ``lr_schedule: cosine`` anneals the segmentation net's step to 0 over the run (off by default; on the default
  set at 1 400 steps it settled the medium classes but stopped before the tiny class was learned: RESULTS.md);
- the label-correction mix α starts at ``initial_alpha`` 0.05 (PyTorch's default init gives 0.5, which halves
  the label signal while the net is untrained; measured in benchmarks/RESULTS.md, "RobPicker by parts");
- network forward passes run under bf16 autocast on GPUs with bf16 and CPUs with AMX (``precision: auto``) and
  in channels_last_3d; losses, the hypergradient's sums and picking stay in fp32;
- post-processing options, off by default (the paper's argmax, DBSCAN per class, no size filter):
  ``calibrate_cluster_sizes`` chooses a cluster-size floor per class on the validation tomograms at each evaluation
  (fragments of the class maps are false picks; a choice made on held-out data, as per-class thresholds are), and
  ``cluster_by: foreground`` clusters all non-background voxels once and gives each cluster its majority class,
  and ``cluster_by: auto`` chooses between the two on the validation tomograms at each evaluation (kept in the
  model file for ``predict``);
  measured in benchmarks/RESULTS.md ("RobPicker post-processing");
- further notes on the meta networks in :mod:`cryoray.methods.robpicker.networks`.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator
from torch.func import functional_call

from cryoray.data.patches import patch_source, patch_stream, split_entries
from cryoray.data.streams import Stream
from cryoray.data.tomogram_recipes import SPLITS
from cryoray.errors import CryorayInputError
from cryoray.io.manifest import MANIFEST_NAME, DatasetManifest
from cryoray.io.models import MODEL_FILE, write_model_file
from cryoray.methods.robpicker.inference import (
    Calibration,
    PickingSettings,
    calibrate_picking,
    headline_metrics,
    score_split,
    segment_split,
    write_split_outputs,
)
from cryoray.methods.robpicker.networks import (
    LabelCorrection,
    LossReweighting,
    dice_loss_per_patch,
    one_hot_labels,
    weighted_dice,
)
from cryoray.nn.bilevel import finite_difference_hypergradient
from cryoray.nn.precision import Precision, autocast
from cryoray.nn.unet3d import UNet3D
from cryoray.picking import ClusterBy
from cryoray.train.context import TrainContext
from cryoray.train.method import Method, TrainState

Mode = Literal["full", "lc_only", "dr_only", "supervised"]


class RobPickerConfig(BaseModel):
    """Hyperparameters of RobPicker (paper values where the CPU budget allows; see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    mode: Mode = Field("full", description="full | lc_only | dr_only | supervised (the paper's ablations)")
    patch_px: int = Field(32, ge=8, description="patch edge in voxels (paper 64); a multiple of 2**len(channels)")
    channels: list[PositiveInt] = Field([8, 16, 32, 48], min_length=1, description="U-Net down-block widths (paper: 4 blocks)")
    bottleneck_channels: int = Field(64, ge=1)
    train_patches_per_epoch: int = Field(512, ge=1, description="training patches drawn per epoch (all workers)")
    meta_patches_per_epoch: int = Field(256, ge=1, description="validation-stream patches per epoch; cycled if short")
    max_shift_px: int | None = Field(None, ge=0, description="random shift of patch centres; None = patch_px // 4")
    train_labels: Literal["sphere", "shape"] = Field("sphere", description="label maps of the training tomograms")
    val_labels: Literal["sphere", "shape"] = Field("shape", description="label maps of the validation stream")
    learning_rate: float = Field(0.05, gt=0, description="SGD step of the segmentation net (paper 1e-4)")
    momentum: float = Field(0.9, ge=0, lt=1)
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="the segmentation net's step: constant (paper) | cosine, annealed to 0 over the run"
    )
    precision: Precision = Field(
        "auto", description="network forward passes: auto (bf16 on GPUs with bf16 and CPUs with AMX) | fp32 | bf16"
    )
    channels_last: bool = Field(True, description="channels_last_3d memory format (1.5× faster 3D convolutions on CPU)")
    weight_decay: float = Field(5e-4, ge=0)
    inner_lr: float | None = Field(None, gt=0, description="η_I of the one-step unroll; None = learning_rate")
    initial_alpha: float = Field(
        0.05, gt=0, lt=1, description="label-correction mix α at the start (paper silent; PyTorch's init gives 0.5)"
    )
    meta_lr_correction: float = Field(1e-3, gt=0, description="Adam step of the label-correction head")
    meta_lr_reweighting: float = Field(1e-3, gt=0, description="Adam step of the reweighting MLP")
    fd_epsilon: float = Field(0.01, gt=0, description="norm of the finite-difference perturbation of I")
    meta_interval: int = Field(1, ge=1, description="lower steps per meta step")
    reweighting_hidden: int = Field(500, ge=1, description="hidden width of the reweighting MLP (paper 500)")
    inference_overlap_px: int = Field(8, ge=0, description="overlap of sliding-window tiles (paper 20 at 64³)")
    inference_batch_size: int = Field(8, ge=1)
    dbscan_eps_px: float = Field(1.0, gt=0, lt=2, description="DBSCAN neighbourhood radius (paper 1 voxel; < 2: a 3×3×3 reach)")
    dbscan_min_voxels: int = Field(5, ge=1, description="DBSCAN min samples (paper 5 voxels)")
    min_cluster_voxels: int = Field(1, ge=1, description="drop clusters smaller than this (1 = paper: no filter)")
    calibrate_cluster_sizes: bool = Field(
        False,
        description="choose min_cluster_voxels per class on the validation tomograms at each evaluation (paper: no "
        "filter); the test picks and the model file use the sizes of the last one",
    )
    cluster_by: ClusterBy | Literal["auto"] = Field(
        "class",
        description="class: DBSCAN per class (paper) | foreground: once, each cluster its majority class | auto: the "
        "better of the two on the validation tomograms",
    )
    tolerance_px: float = Field(4.0, gt=0, description="distance rule: a pick matches a particle within this radius")
    test_time_flips: bool = Field(
        False, description="average class probabilities over the training flips' four 180° rotations (4× inference)"
    )
    weight_average_decay: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="evaluate, test and save an exponential moving average of the segmentation net's weights, with "
        "this decay per step (None = the live net, paper)",
    )
    eval_every_epochs: int = Field(1, ge=1, description="validation picking + F1 every this many epochs")
    keep_best: bool = Field(
        False,
        description="test picks and the model file use the net (and post-processing) of the evaluation with the best "
        "validation F1, not the last epoch's",
    )

    @model_validator(mode="after")
    def _patch_fits_depth(self) -> RobPickerConfig:
        multiple = 2 ** len(self.channels)
        if self.patch_px % multiple:
            raise ValueError(f"patch_px {self.patch_px} must be a multiple of {multiple} for {len(self.channels)} down-blocks")
        if self.inference_overlap_px >= self.patch_px:
            raise ValueError(f"inference_overlap_px {self.inference_overlap_px} must be smaller than patch_px {self.patch_px}")
        return self

    @property
    def uses_correction(self) -> bool:
        return self.mode in ("full", "lc_only")

    @property
    def uses_reweighting(self) -> bool:
        return self.mode in ("full", "dr_only")

    @property
    def uses_meta(self) -> bool:
        return self.mode != "supervised"

    @property
    def cluster_options(self) -> tuple[ClusterBy, ...]:
        """The clusterings a calibration chooses from (the paper's first: it wins ties)."""
        return ("class", "foreground") if self.cluster_by == "auto" else (self.cluster_by,)

    @property
    def calibrates(self) -> bool:
        return self.calibrate_cluster_sizes or self.cluster_by == "auto"

    def picking(self, calibration: Calibration | None = None) -> PickingSettings:
        """Inference and post-processing settings; a calibration's clustering and floors replace the configured
        ones (``auto`` without one clusters per class, as the paper)."""
        sizes = None if calibration is None else calibration.min_cluster_voxels
        return PickingSettings(
            patch_px=self.patch_px,
            overlap_px=self.inference_overlap_px,
            batch_size=self.inference_batch_size,
            dbscan_eps_px=self.dbscan_eps_px,
            dbscan_min_voxels=self.dbscan_min_voxels,
            min_cluster_voxels=self.min_cluster_voxels if sizes is None else sizes,
            cluster_by=self.cluster_options[0] if calibration is None else calibration.cluster_by,
            tolerance_px=self.tolerance_px,
            precision=self.precision,
            test_time_flips=self.test_time_flips,
        )


def _format(config: RobPickerConfig) -> torch.memory_format:
    return torch.channels_last_3d if config.channels_last else torch.contiguous_format


ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


def _placed(module: ModuleT, config: RobPickerConfig, ctx: TrainContext) -> ModuleT:
    """The module on the worker's device, its convolution weights in the configured memory format."""
    module.to(ctx.device)
    return module.to(memory_format=_format(config))  # type: ignore[call-overload]  # accepted by Module.to, not in its stubs


def _input(patches: torch.Tensor, config: RobPickerConfig) -> torch.Tensor:
    """(B, D, H, W) patches → the network's (B, 1, D, H, W) input in its memory format."""
    return patches.unsqueeze(1).contiguous(memory_format=_format(config))


def _cycle(make: Callable[[], Iterator[dict[str, torch.Tensor]]]) -> Iterator[dict[str, torch.Tensor]]:
    """Iterate a stream over and over (the validation stream is replicated and may be shorter than an epoch)."""
    while True:
        empty = True
        for item in make():
            empty = False
            yield item
        if empty:
            raise RuntimeError("robpicker: the validation (meta) stream produced no batch")


def _update_average(state: TrainState, decay: float) -> None:
    """Move the running average of the segmentation net's weights and buffers (``state.extra``, checkpointed)
    towards the live net; the first call starts it at the live net."""
    live = state.unwrapped("segmenter").state_dict()
    average = state.extra.get("segmenter_average")
    if average is None:
        state.extra["segmenter_average"] = {name: value.detach().clone() for name, value in live.items()}
        return
    with torch.no_grad():
        for name, value in live.items():
            if average[name].device != value.device:  # restored from a checkpoint on another device
                average[name] = average[name].to(value.device)
            if value.is_floating_point():
                average[name].lerp_(value, 1.0 - decay)
            else:
                average[name].copy_(value)


def _grad_reducer(ctx: TrainContext):
    """Average a list of gradients over the Ray Train workers in one all-reduce."""

    def reduce(grads: list[torch.Tensor]) -> list[torch.Tensor]:
        if not ctx.distributed:
            return grads
        flat = ctx.all_reduce_mean(torch.cat([g.reshape(-1) for g in grads]))
        return [part.view_as(g) for part, g in zip(flat.split([g.numel() for g in grads]), grads)]

    return reduce


class RobPicker(Method[RobPickerConfig]):
    """Cryo-ET particle picking by bi-level meta-learning (see the module docstring)."""

    name = "robpicker"
    key_metrics = {"val_f1_macro": "max"}
    config_schema = RobPickerConfig
    dataset_kind = "tomograms"
    default_preset = {"train": {"epochs": 10, "batch_size": 8, "log_every_steps": 5}}
    smoke_preset = {
        "num_workers": 2,
        "train": {"epochs": 2, "batch_size": 4, "log_every_steps": 2},
        "method": {
            "patch_px": 16,
            "channels": [4, 8, 8, 16],
            "bottleneck_channels": 16,
            "train_patches_per_epoch": 48,
            "meta_patches_per_epoch": 24,
            "inference_overlap_px": 4,
        },
    }

    def check_dataset(self, dataset_dir: Path, manifest: DatasetManifest, config: RobPickerConfig) -> None:
        super().check_dataset(dataset_dir, manifest, config)
        missing = [split for split in SPLITS if not any(t.split == split for t in manifest.tomograms)]
        if missing:  # train is trained on, val picked every epoch, test scored at the end
            expected = "at least one train, one val and one test tomogram"
            raise CryorayInputError(dataset_dir / MANIFEST_NAME, "tomograms", expected, f"no {' or '.join(missing)}")

    def datasets(self, dataset_dir: Path, manifest: DatasetManifest, config: RobPickerConfig, seed: int = 0) -> dict[str, Stream]:
        shift = config.patch_px // 4 if config.max_shift_px is None else config.max_shift_px
        train = patch_source(dataset_dir, split_entries(manifest, "train"), config.train_labels, "annotations")
        streams: dict[str, Stream] = {
            "train": patch_stream(
                train, config.train_patches_per_epoch, config.patch_px, shift, "particles", augment=True, seed=seed
            )
        }
        if config.uses_meta:
            val = patch_source(dataset_dir, split_entries(manifest, "val"), config.val_labels, "particles")
            streams["meta"] = patch_stream(
                val, config.meta_patches_per_epoch, config.patch_px, shift, "class_balanced", augment=True, seed=seed
            )
        return streams

    def epoch_items(self, config: RobPickerConfig, manifest: DatasetManifest) -> int:
        return config.train_patches_per_epoch

    def setup(self, config: RobPickerConfig, manifest: DatasetManifest, ctx: TrainContext) -> TrainState:
        num_classes = len(manifest.species) + 1
        segmenter = _placed(UNet3D(num_classes, config.channels, config.bottleneck_channels), config, ctx)
        modules: dict[str, torch.nn.Module] = {"segmenter": segmenter}
        optimizers: dict[str, torch.optim.Optimizer] = {
            "segmenter": torch.optim.SGD(
                segmenter.parameters(), lr=config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay
            )
        }
        meta_groups = []
        if config.uses_correction:
            corrector = LabelCorrection(segmenter.feature_channels, num_classes, config.initial_alpha)
            modules["label_corrector"] = _placed(corrector, config, ctx)
            meta_groups.append({"params": modules["label_corrector"].parameters(), "lr": config.meta_lr_correction})
        if config.uses_reweighting:
            modules["reweighter"] = LossReweighting(config.reweighting_hidden).to(ctx.device)
            meta_groups.append({"params": modules["reweighter"].parameters(), "lr": config.meta_lr_reweighting})
        if meta_groups:
            optimizers["meta"] = torch.optim.Adam(meta_groups)
        schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}
        if config.lr_schedule == "cosine":
            schedulers["segmenter"] = torch.optim.lr_scheduler.CosineAnnealingLR(optimizers["segmenter"], ctx.total_steps)
        return TrainState(modules=modules, optimizers=optimizers, schedulers=schedulers)

    def train_batches(self, state: TrainState, config: RobPickerConfig, ctx: TrainContext) -> Iterator[dict[str, torch.Tensor]]:
        def stream(name: str) -> Iterator[dict[str, torch.Tensor]]:
            return ctx.datasets[name].iter_torch_batches(
                batch_size=ctx.runner.batch_size,
                dtypes={"patch": torch.float32, "labels": torch.int64},
                device=ctx.device,
                prefetch_batches=2,
            )

        if not config.uses_meta:
            yield from stream("train")
            return
        meta = _cycle(lambda: stream("meta"))
        for batch in stream("train"):
            if ctx.global_step % config.meta_interval:  # no meta step on this one: draw no validation patches for it
                yield batch
                continue
            meta_batch = next(meta)
            yield {**batch, "meta_patch": meta_batch["patch"], "meta_labels": meta_batch["labels"]}

    def _meta_modules(self, state: TrainState) -> tuple[LabelCorrection | None, LossReweighting | None]:
        corrector = state.unwrapped("label_corrector", LabelCorrection) if "label_corrector" in state.modules else None
        reweighter = state.unwrapped("reweighter", LossReweighting) if "reweighter" in state.modules else None
        return corrector, reweighter

    def _meta_step(
        self, state: TrainState, batch: dict[str, torch.Tensor], num_classes: int, config: RobPickerConfig, ctx: TrainContext
    ) -> dict[str, float]:
        """Update C and R by the finite-difference hypergradient (eqs. 6–13), on the unwrapped modules."""
        segmenter = state.unwrapped("segmenter")
        corrector, reweighter = self._meta_modules(state)
        # Copies of the batch-norm buffers: the extra forward passes must not move the running statistics.
        buffers = {name: b.clone() for name, b in segmenter.named_buffers()}
        x, noisy = _input(batch["patch"], config), one_hot_labels(batch["labels"], num_classes)
        meta_x, meta_target = _input(batch["meta_patch"], config), one_hot_labels(batch["meta_labels"], num_classes)

        def segment(params: Mapping[str, torch.Tensor], patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with autocast(config.precision, ctx.device):
                logits, features = functional_call(segmenter, {**params, **buffers}, (patches,))
            return logits.float(), features.float()

        with torch.no_grad():  # stop-gradient inputs of the lower loss, at the current weights I
            logits, features = segment(dict(segmenter.named_parameters()), x)
            target = noisy if corrector is None else corrector(features, noisy)[0]
            losses = dice_loss_per_patch(torch.softmax(logits, dim=1), target)

        def lower(params: Mapping[str, torch.Tensor]) -> torch.Tensor:
            logits, _ = segment(params, x)
            return weighted_dice(logits, noisy, corrector, reweighter, features, losses)[0]

        def upper(params: Mapping[str, torch.Tensor]) -> torch.Tensor:
            logits, _ = segment(params, meta_x)
            return dice_loss_per_patch(torch.softmax(logits, dim=1), meta_target).mean()

        meta_params = [p for m in (corrector, reweighter) if m is not None for p in m.parameters()]
        result = finite_difference_hypergradient(
            lower,
            upper,
            dict(segmenter.named_parameters()),
            meta_params,
            inner_lr=config.inner_lr or config.learning_rate,
            epsilon=config.fd_epsilon,
            reduce=_grad_reducer(ctx),
        )
        norm = torch.sqrt(functools.reduce(torch.add, ((g**2).sum() for g in result.grads)))
        ctx.check_finite({"hypergradient": norm, "val_dice_unrolled": torch.tensor(result.upper_loss)})
        optimizer = state.optimizers["meta"]
        optimizer.zero_grad(set_to_none=True)
        for param, grad in zip(meta_params, result.grads):
            param.grad = grad.detach()
        optimizer.step()
        return {
            "meta_val_dice": result.upper_loss,
            "hypergradient_norm": float(norm),
            "fd_epsilon_scaled": result.perturbation_scale,
        }

    def train_step(
        self, state: TrainState, batch: dict[str, torch.Tensor], config: RobPickerConfig, ctx: TrainContext
    ) -> dict[str, float]:
        num_classes = len(ctx.manifest.species) + 1
        metrics: dict[str, float] = {}
        if config.uses_meta and ctx.global_step % config.meta_interval == 0:
            metrics.update(self._meta_step(state, batch, num_classes, config, ctx))
        corrector, reweighter = self._meta_modules(state)
        with autocast(config.precision, ctx.device):
            logits, features = state.modules["segmenter"](_input(batch["patch"], config))
        logits, features = logits.float(), features.float()
        noisy = one_hot_labels(batch["labels"], num_classes)
        loss, parts = weighted_dice(logits, noisy, corrector, reweighter, features)
        ctx.step(state.optimizers["segmenter"], {"weighted_dice": loss})
        if config.weight_average_decay is not None:
            _update_average(state, config.weight_average_decay)
        metrics.update({"weighted_dice": float(loss.detach()), **{k: float(v.detach()) for k, v in parts.items()}})
        return metrics

    def evaluate(self, state: TrainState, config: RobPickerConfig, ctx: TrainContext) -> dict[str, float]:
        """Rank 0 picks the validation tomograms and scores them; with ``calibrate_cluster_sizes`` or ``cluster_by:
        auto`` with the post-processing chosen on them (kept in the checkpoint for the test picks and the model file)."""
        if not ctx.epoch_is_due(config.eval_every_epochs):
            return {}
        scores = None
        if ctx.is_rank_zero:
            segmenter = self._evaluated(state, config)
            segmented = segment_split(segmenter, ctx.dataset_dir, ctx.manifest, "val", config.picking(), ctx.device)
            calibration = (
                calibrate_picking(
                    segmented, ctx.manifest, config.picking(), config.cluster_options, config.calibrate_cluster_sizes
                )
                if config.calibrates
                else None
            )
            result, _ = score_split(segmented, ctx.manifest, config.picking(calibration))
            scores = headline_metrics(result, "val_")
            if calibration is not None:
                sizes = calibration.min_cluster_voxels
                state.extra["cluster_by"] = calibration.cluster_by
                state.extra["min_cluster_voxels"] = None if sizes is None else {str(c): v for c, v in sizes.items()}
                scores["val_cluster_by_foreground"] = float(calibration.cluster_by == "foreground")
                names = {species.class_id: species.name for species in ctx.manifest.species}
                scores |= {f"val_min_cluster_voxels/{names[c]}": float(v) for c, v in (sizes or {}).items() if c in names}
            best = state.extra.get("best")
            if config.keep_best and (best is None or scores["val_f1_macro"] > best["val_f1_macro"]):
                weights = {k: v.detach().clone() for k, v in segmenter.state_dict().items()}
                state.extra["best"] = {
                    "epoch": ctx.epoch,
                    "val_f1_macro": scores["val_f1_macro"],
                    "segmenter": weights,
                    "cluster_by": state.extra.get("cluster_by"),
                    "min_cluster_voxels": state.extra.get("min_cluster_voxels"),
                }
        return ctx.broadcast_from_rank_zero(scores)

    @staticmethod
    def _evaluated(state: TrainState, config: RobPickerConfig) -> torch.nn.Module:
        """The net as evaluated now: the live segmentation net, or with ``weight_average_decay`` a copy holding the
        running average of its weights."""
        segmenter = state.unwrapped("segmenter")
        average = state.extra.get("segmenter_average")
        if config.weight_average_decay is None or average is None:
            return segmenter
        averaged = copy.deepcopy(segmenter)
        averaged.load_state_dict(average)
        return averaged.eval()

    def _final(self, state: TrainState, config: RobPickerConfig) -> tuple[torch.nn.Module, dict[str, Any]]:
        """The net the test picks and the model file use, and the record of its post-processing: the last epoch's
        (averaged with ``weight_average_decay``), or with ``keep_best`` the best evaluation's."""
        best = state.extra.get("best") if config.keep_best else None
        if best is None:
            return self._evaluated(state, config), state.extra
        kept = copy.deepcopy(state.unwrapped("segmenter"))
        kept.load_state_dict(best["segmenter"])
        return kept, best

    @staticmethod
    def _calibrated(record: Mapping[str, Any], config: RobPickerConfig) -> Calibration | None:
        """The post-processing a calibration recorded (``cluster_by``, ``min_cluster_voxels``), None without one."""
        sizes, cluster_by = record.get("min_cluster_voxels"), record.get("cluster_by")
        if sizes is None and cluster_by is None:
            return None
        return Calibration(
            cluster_by or config.cluster_options[0],
            None if sizes is None else {int(class_id): int(size) for class_id, size in sizes.items()},
        )

    def test(
        self, state: TrainState, config: RobPickerConfig, ctx: TrainContext, output_dir: Path
    ) -> tuple[dict[str, float], dict[str, str]]:
        """Pick the held-out test tomograms on rank 0: picks, class maps, orthoslices, scores table, F1."""
        if not ctx.is_rank_zero:
            return {}, {}
        segmenter, record = self._final(state, config)
        settings = config.picking(self._calibrated(record, config))
        metrics, artifacts = write_split_outputs(
            segmenter, ctx.dataset_dir, ctx.manifest, "test", settings, ctx.device, output_dir
        )
        if "epoch" in record:
            metrics["selected_epoch"] = float(record["epoch"] + 1)  # the kept evaluation's epoch, counted from 1
        return metrics, artifacts

    def write_artifacts(self, state: TrainState, config: RobPickerConfig, ctx: TrainContext, output_dir: Path) -> dict[str, str]:
        if not ctx.is_rank_zero:
            return {}
        segmenter, record = self._final(state, config)
        path = write_model_file(
            output_dir / MODEL_FILE,
            self.name,
            {"segmenter": segmenter},
            {
                "config": config.model_dump(mode="json"),
                "num_classes": len(ctx.manifest.species) + 1,
                "species": [s.model_dump(mode="json") for s in ctx.manifest.species],
                "voxel_size_angstrom": ctx.manifest.voxel_size_angstrom,
                "min_cluster_voxels": record.get("min_cluster_voxels"),  # calibrated per class, or None
                "cluster_by": record.get("cluster_by"),  # chosen on validation, or None
            },
        )
        return {"model": str(path)}
