"""Trained models and training checkpoints on disk, in formats that cannot run code when they are read.

A model file (``model.safetensors``) holds each network's weights as named tensors and, in its header, JSON
metadata (method, schema version, config, voxel size, classes, …): reading it parses JSON and raw tensor bytes,
nothing is unpickled, so a model downloaded from a shared MLflow server is as safe to open as an image.
Runner checkpoints also hold optimiser state, which is nested, so they stay torch files, but they are only
ever read with ``weights_only=True`` (tensors and plain containers; any other pickled object is refused).
Every write goes to a temporary name first and is renamed when complete, so no reader sees half a file.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from cryoray import __version__
from cryoray.errors import CryorayInputError
from cryoray.io.outputs import atomic_write

MODEL_FILE = "model.safetensors"
MODEL_SCHEMA_VERSION = 1
# The one safetensors header key that carries the JSON metadata.
METADATA_KEY = "cryoray"

CHECKPOINT_FILE = "state.pt"
CHECKPOINT_SCHEMA_VERSION = 2
# Per-rank files of sharded training state: "<prefix><rank>-of-<world size>.pt" next to state.pt.
SHARDED_FILE_PREFIX = "sharded-rank"


@dataclass(frozen=True)
class Model:
    """A trained model as read back: its metadata and one state dict per network."""

    path: Path
    metadata: dict[str, Any]
    state_dicts: dict[str, dict[str, torch.Tensor]]

    @property
    def config(self) -> dict[str, Any]:
        """The method's training config (a plain mapping, as ``model_dump(mode="json")`` wrote it)."""
        return self.metadata["config"]


def write_model_file(path: Path, method: str, modules: Mapping[str, torch.nn.Module], metadata: Mapping[str, Any]) -> Path:
    """Save ``modules``' weights and JSON-serialisable ``metadata`` (which must include ``config``) as one file."""
    if "config" not in metadata:
        raise ValueError("model metadata needs the method's 'config'")
    header = {"method": method, "schema_version": MODEL_SCHEMA_VERSION, "cryoray_version": __version__, **metadata}
    tensors = {
        f"{name}.{key}": value.detach().to("cpu").contiguous()
        for name, module in modules.items()
        for key, value in module.state_dict().items()
    }
    text = json.dumps(header, allow_nan=False)
    return atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata={METADATA_KEY: text}))


def model_metadata(path: str | Path) -> dict[str, Any]:
    """A model file's physical metadata (voxel size, classes, …) without its config or weights: what the MLflow
    logged model carries as params."""
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        header = json.loads((handle.metadata() or {})[METADATA_KEY])
    return {key: value for key, value in header.items() if key != "config"}


def resolve_model_reference(reference: str) -> Path:
    """A ``--model`` reference as a local path: MLflow URIs (``runs:/<id>/outputs/model.safetensors``,
    ``models:/NAME/VERSION``, ``models:/NAME@alias``, ``s3://…``) are downloaded to a temporary folder; anything
    else is a path. A failed download is bad input."""
    if "://" not in reference and not reference.startswith(("runs:/", "models:/")):
        return Path(reference)
    import mlflow  # only for remote references: importing it costs seconds

    try:
        return Path(mlflow.artifacts.download_artifacts(reference, dst_path=tempfile.mkdtemp(prefix="cryoray-model-")))
    except Exception as exc:  # noqa: BLE001 - any download failure is the user's reference
        raise CryorayInputError(reference, "--model", "a downloadable MLflow artifact URI", str(exc).splitlines()[0]) from None


def read_model(reference: str, method: str, required: tuple[str, ...] = ()) -> Model:
    """The model a training run of ``method`` wrote, from a model file, a training output folder holding one, a
    runner checkpoint folder (``state.pt``; its config and ``extra`` become the metadata), or an MLflow URI.

    Anything else (a pickled ``model.pt``, a foreign file, another method's model, metadata without the
    ``required`` keys) is refused with ``CryorayInputError`` before a single object is built from it.
    """
    path = resolve_model_reference(reference)
    if path.is_dir() and not (path / MODEL_FILE).is_file() and (path / CHECKPOINT_FILE).is_file():
        model = _model_from_checkpoint(path)
    else:
        path = path / MODEL_FILE if path.is_dir() else path
        if not path.is_file():
            raise CryorayInputError(
                path, "--model", f"a {method} {MODEL_FILE} or the output folder of a training run", "no such file"
            )
        model = _read_model_file(path)
    found = model.metadata.get("method")
    if found != method:
        raise CryorayInputError(model.path, "method", f"a {method} model", found)
    missing = [key for key in ("config", *required) if key not in model.metadata]
    if missing:
        raise CryorayInputError(model.path, missing[0], f"a {method} model with {', '.join(required) or 'config'}", "missing")
    return model


def _read_model_file(path: Path) -> Model:
    expected = f"a cryoray {MODEL_FILE} (safetensors weights with JSON metadata; pickled model files are never loaded)"
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = (handle.metadata() or {}).get(METADATA_KEY)
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except (SafetensorError, OSError, ValueError) as exc:
        raise CryorayInputError(
            path, "--model", expected, f"unreadable ({str(exc).splitlines()[0] or type(exc).__name__})"
        ) from None
    if header is None:
        raise CryorayInputError(path, METADATA_KEY, expected, "a safetensors file without cryoray metadata")
    try:
        metadata = json.loads(header)
    except json.JSONDecodeError as exc:
        raise CryorayInputError(path, METADATA_KEY, "JSON metadata", str(exc)) from None
    if not isinstance(metadata, dict) or metadata.get("schema_version") != MODEL_SCHEMA_VERSION:
        found = metadata.get("schema_version") if isinstance(metadata, dict) else type(metadata).__name__
        raise CryorayInputError(path, "schema_version", f"model schema {MODEL_SCHEMA_VERSION}", found)
    state_dicts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        module, _, parameter = key.partition(".")
        state_dicts.setdefault(module, {})[parameter] = value
    return Model(path, metadata, state_dicts)


def _model_from_checkpoint(directory: Path) -> Model:
    try:
        state = read_checkpoint(directory)
    except ValueError as exc:
        raise CryorayInputError(directory, "--model", "a runner checkpoint of this cryoray version", str(exc)) from None
    metadata = {**state["extra"], "method": state["method"], "config": state["config"]["method"]}
    return Model(directory / CHECKPOINT_FILE, metadata, state["modules"])


def write_checkpoint(
    directory: Path,
    *,
    method: str,
    config: dict[str, Any],
    epoch: int,
    global_step: int,
    modules: Mapping[str, torch.nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    schedulers: Mapping[str, Any],
    extra: dict[str, Any],
) -> Path:
    """The runner's replicated training state (rank 0's copy): everything a resumed run needs."""
    payload = {
        "schema_version": CHECKPOINT_SCHEMA_VERSION,
        "cryoray_version": __version__,
        "method": method,
        "config": config,
        "epoch": epoch,
        "global_step": global_step,
        "modules": {name: module.state_dict() for name, module in modules.items()},
        "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
        "schedulers": {name: sch.state_dict() for name, sch in schedulers.items()},
        "extra": extra,
    }
    return atomic_write(Path(directory) / CHECKPOINT_FILE, lambda tmp: torch.save(payload, tmp))


def read_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The state ``write_checkpoint`` saved; raises ``ValueError`` for a foreign or older file."""
    return _read_torch_file(Path(directory) / CHECKPOINT_FILE, map_location)


def sharded_file(rank: int, world_size: int) -> str:
    return f"{SHARDED_FILE_PREFIX}{rank:05d}-of-{world_size:05d}.pt"


def write_sharded_checkpoint(directory: Path, rank: int, world_size: int, epoch: int, states: dict[str, Any]) -> Path:
    """One rank's own file of per-worker state (e.g. its rows of a per-image table)."""
    payload = {
        "schema_version": CHECKPOINT_SCHEMA_VERSION,
        "rank": rank,
        "world_size": world_size,
        "epoch": epoch,
        "states": states,
    }
    return atomic_write(Path(directory) / sharded_file(rank, world_size), lambda tmp: torch.save(payload, tmp))


def sharded_checkpoint_files(directory: Path, rank: int, world_size: int) -> list[Path]:
    """Every rank's sharded file in ``directory``, this rank's own (same world size) first."""
    own = Path(directory) / sharded_file(rank, world_size)
    return sorted(sorted(Path(directory).glob(f"{SHARDED_FILE_PREFIX}*.pt")), key=lambda p: p != own)


def read_sharded_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The ``{name: shard state}`` mapping one rank saved."""
    return _read_torch_file(path, map_location)["states"]


def _read_torch_file(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    """``torch.load`` restricted to tensors and plain containers, then a schema check."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle errors have many types; the message says which
        raise ValueError(f"{path}: not a cryoray checkpoint that loads without code ({str(exc).splitlines()[0]})") from None
    if not isinstance(state, dict) or state.get("schema_version") != CHECKPOINT_SCHEMA_VERSION:
        found = state.get("schema_version") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path}: schema_version: expected {CHECKPOINT_SCHEMA_VERSION}, got {found}")
    return state
