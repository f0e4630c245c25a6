"""Sliding-window inference of a patch-based 3D segmentation network over a whole tomogram.

A network trained on ``p³`` patches is run on overlapping ``p³`` tiles (RobPicker: 64³ tiles
overlapping by 20 voxels) and the per-class probabilities of the overlaps are averaged, which
removes the seams that the tiles' borders (little context) would otherwise leave.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import torch

__all__ = ["sliding_window_predict", "tile_starts_px"]

WEIGHTINGS = ("uniform", "gaussian")


def tile_starts_px(size_px: int, patch_px: int, overlap_px: int) -> list[int]:
    """Tile origins along one axis: every ``patch_px - overlap_px``, the last one flush with the edge.

    An axis shorter than the patch gets the single origin 0 (the caller pads it to ``patch_px``).
    """
    if size_px <= patch_px:
        return [0]
    stride_px = patch_px - overlap_px
    starts = list(range(0, size_px - patch_px, stride_px))
    return starts + [size_px - patch_px]


def _reflect_index(size_px: int, length_px: int, device: torch.device) -> torch.Tensor:
    """Indices 0 .. length_px-1 folded back into 0 .. size_px-1 by mirror reflection (no edge repeat).

    Unlike ``F.pad(mode="reflect")`` this works for any padding, also one longer than the axis.
    """
    index = torch.arange(length_px, device=device)
    if size_px == 1:
        return torch.zeros_like(index)
    period = 2 * (size_px - 1)
    index = index % period
    return torch.where(index < size_px, index, period - index)


def _pad_to_patch(volume: torch.Tensor, patch_px: int, pad_mode: str) -> torch.Tensor:
    """Pad axes shorter than the patch at their far end (index 0 stays the volume's first voxel)."""
    for axis, size_px in enumerate(volume.shape):
        if size_px >= patch_px:
            continue
        if pad_mode == "reflect":
            volume = volume.index_select(axis, _reflect_index(size_px, patch_px, volume.device))
        else:
            shape = list(volume.shape)
            shape[axis] = patch_px - size_px
            volume = torch.cat((volume, volume.new_zeros(shape)), dim=axis)
    return volume


def _window_1d(patch_px: int, weighting: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Per-axis tile weights: ones, or nnU-Net's Gaussian (sigma = patch/8) that trusts tile centres more."""
    if weighting == "uniform":
        return torch.ones(patch_px, dtype=dtype, device=device)
    offset = torch.arange(patch_px, dtype=dtype, device=device) - (patch_px - 1) / 2
    return torch.exp(-0.5 * (offset / (patch_px / 8)) ** 2)


def _normaliser_1d(size_px: int, starts: list[int], window: torch.Tensor) -> torch.Tensor:
    """Sum of the window over the tiles covering each position of one axis."""
    total = window.new_zeros(size_px)
    for start in starts:
        total[start : start + window.numel()] += window
    return total


def _batches(origins: list[tuple[int, int, int]], batch_size: int) -> Iterator[list[tuple[int, int, int]]]:
    for first in range(0, len(origins), batch_size):
        yield origins[first : first + batch_size]


def sliding_window_predict(
    volume: torch.Tensor,
    predict: Callable[[torch.Tensor], torch.Tensor],
    patch_px: int,
    overlap_px: int,
    batch_size: int = 4,
    device: torch.device | str | None = None,
    *,
    weighting: str = "uniform",
    pad_mode: str = "reflect",
) -> torch.Tensor:
    """Run ``predict`` on overlapping tiles of a (Z, Y, X) volume and average the overlaps into (C, Z, Y, X).

    ``predict`` maps a (B, 1, p, p, p) batch to (B, C, p, p, p) class probabilities (the caller
    applies softmax, puts the network in eval mode and normalises the volume; tiles keep the
    volume's dtype). Tiles start every ``patch_px - overlap_px`` voxels per axis and the last tile
    of an axis is flush with its edge, so every voxel is covered and nothing is padded along axes
    at least one patch long. Axes shorter
    than the patch are padded at their far end, by mirror reflection (``pad_mode="reflect"``,
    default: keeps the local statistics a network saw in training) or with zeros
    (``pad_mode="zeros"``: the mean of a normalised volume); the padding is cropped away again.

    ``weighting="uniform"`` (default, the paper's plain average) or ``"gaussian"`` (nnU-Net).
    Both windows are separable, so the sum of weights is the outer product of three 1D sums and
    no weight volume is kept: memory is one output volume (on the volume's device) plus one batch
    of tiles and predictions (on ``device``, default the volume's device). Runs under
    ``torch.no_grad``; the accumulation dtype is the predictions' dtype, at least float32.
    """
    if volume.ndim != 3:
        raise ValueError(f"sliding_window_predict: expected a (Z, Y, X) volume, got shape {tuple(volume.shape)}")
    if min(volume.shape) < 1:
        raise ValueError(f"sliding_window_predict: the volume is empty, shape {tuple(volume.shape)}")
    if patch_px < 1 or not 0 <= overlap_px < patch_px:
        raise ValueError(
            f"sliding_window_predict: need patch_px >= 1 and 0 <= overlap_px < patch_px, got {patch_px} and {overlap_px}"
        )
    if batch_size < 1:
        raise ValueError(f"sliding_window_predict: batch_size must be >= 1, got {batch_size}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"sliding_window_predict: weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if pad_mode not in ("reflect", "zeros"):
        raise ValueError(f"sliding_window_predict: pad_mode must be 'reflect' or 'zeros', got {pad_mode!r}")
    size_zyx = tuple(volume.shape)
    padded = _pad_to_patch(volume, patch_px, pad_mode)
    run_device = torch.device(device) if device is not None else volume.device
    starts = [tile_starts_px(n, patch_px, overlap_px) for n in padded.shape]
    z_starts, y_starts, x_starts = starts
    origins = list(itertools.product(z_starts, y_starts, x_starts))
    output: torch.Tensor | None = None
    window: torch.Tensor | None = None
    with torch.no_grad():
        for batch in _batches(origins, batch_size):
            tiles = torch.stack([padded[z : z + patch_px, y : y + patch_px, x : x + patch_px] for z, y, x in batch])
            prediction = predict(tiles[:, None].to(run_device))
            if prediction.ndim != 5 or prediction.shape[0] != len(batch) or tuple(prediction.shape[2:]) != (patch_px,) * 3:
                raise ValueError(
                    f"sliding_window_predict: predict returned shape {tuple(prediction.shape)} for a batch of "
                    f"shape {(len(batch), 1, patch_px, patch_px, patch_px)}; expected (B, C, p, p, p)"
                )
            if output is None or window is None:  # the first batch (both are set together)
                dtype = torch.promote_types(prediction.dtype, torch.float32)
                output = torch.zeros((prediction.shape[1], *padded.shape), dtype=dtype, device=volume.device)
                window = _window_1d(patch_px, weighting, dtype, run_device)
            prediction = prediction.to(output.dtype)
            if weighting != "uniform":
                prediction = prediction * (window[:, None, None] * window[None, :, None] * window[None, None, :])
            prediction = prediction.to(output.device)
            for (z, y, x), tile_prediction in zip(batch, prediction):
                output[:, z : z + patch_px, y : y + patch_px, x : x + patch_px] += tile_prediction
    assert output is not None and window is not None  # at least one tile always exists
    window = window.to(output.device)
    norm_z, norm_y, norm_x = (_normaliser_1d(n, s, window) for n, s in zip(padded.shape, starts))
    output /= norm_z[:, None, None]
    output /= norm_y[None, :, None]
    output /= norm_x[None, None, :]
    if tuple(padded.shape) != size_zyx:
        output = output[:, : size_zyx[0], : size_zyx[1], : size_zyx[2]].contiguous()
    return output
