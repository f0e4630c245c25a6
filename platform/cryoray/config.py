"""Job configuration: one pydantic schema, validated once on the driver, with every problem named at once.

Precedence, lowest first: the schema defaults, the method's ``--smoke`` preset, the ``--config`` YAML file,
the command-line flags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, ValidationError, field_validator

from cryoray.errors import CryorayInputError


class RunnerConfig(BaseModel):
    """Settings of the generic training runner, shared by every method."""

    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=64, ge=1, description="images (or patches) per worker per step")
    max_steps_per_epoch: int | None = Field(default=None, ge=1, description="cap for smoke runs; None = whole shard")
    checkpoint_every_epochs: int = Field(default=1, ge=1)
    checkpoints_to_keep: int = Field(default=2, ge=1)
    max_failures: int = Field(default=2, ge=0, description="worker-group restarts from the latest checkpoint")
    log_every_steps: int = Field(default=10, ge=1)
    seed: int = 0
    shuffle_buffer_images: int | None = Field(default=1024, ge=1, description="local shuffle buffer per worker")
    parquet_feed: Literal["ray_data", "worker"] = Field(
        default="ray_data",
        description="who reads a stored (Parquet) training stream: ray_data, read tasks split across the workers "
        "(reading spread over the cluster's CPUs) | worker, each worker its own equal part of the row groups "
        "(no object store: several times faster per worker on few CPUs; every node must see the files)",
    )
    cpus_per_worker: float = Field(
        default=0.5, gt=0, description="CPUs reserved per Train worker; keep some free for Ray Data read tasks"
    )
    resources_per_worker: dict[str, PositiveFloat] = Field(
        default_factory=dict,
        description="custom Ray resources each Train worker also reserves, e.g. {trainer_slot: 1} on nodes started "
        "with one slot each places one worker per node (CPU and GPU come from cpus_per_worker and --use-gpu)",
    )

    @field_validator("resources_per_worker")
    @classmethod
    def _custom_resources_only(cls, value: dict[str, float]) -> dict[str, float]:
        reserved = sorted({"CPU", "GPU"} & set(value))
        if reserved:
            raise ValueError(f"{reserved} are set by cpus_per_worker and --use-gpu, not here")
        return value


class JobConfig(BaseModel):
    """Everything a job needs; ``method`` is validated by the method's own schema."""

    model_config = ConfigDict(extra="forbid")
    dataset: str = Field(description="recipe name in datasets/ or a dataset directory")
    num_workers: int = Field(2, ge=0, description="Ray Train workers; 0 runs the loop in the driver process")
    use_gpu: bool = False
    output_dir: str
    tracking_uri: str | None = None
    experiment_name: str | None = None
    storage_path: str | None = Field(None, description="Ray Train checkpoint storage; shared (s3://, NFS) on clusters")
    run_name: str | None = Field(None, description="reuse a run name to resume it from its last checkpoint")
    register_model: str | None = Field(
        None, min_length=1, description="register the trained model under this name (models:/NAME/VERSION)"
    )
    overwrite: bool = False
    train: RunnerConfig = Field(default_factory=RunnerConfig)
    method: dict[str, Any] = Field(default_factory=dict)

    @property
    def checkpoint_storage(self) -> str:
        """Where Ray Train keeps this job's runs: ``storage_path``, else ``<output_dir>/checkpoints``."""
        return self.storage_path or str(Path(self.output_dir) / "checkpoints")


def deep_update(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge (override wins), so a YAML file may set a single nested key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_update(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml_config(path: str | Path) -> dict[str, Any]:
    """A YAML mapping, or one clear error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CryorayInputError(path, "--config", "an existing YAML file", "no such file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CryorayInputError(path, "yaml", "valid YAML", str(exc).splitlines()[0]) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise CryorayInputError(path, "top level", "a mapping of config keys", type(raw).__name__)
    return raw


def format_validation_errors(exc: ValidationError, prefix: str = "") -> list[str]:
    """'key.path: message' for every problem pydantic found."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in (prefix, *err["loc"]) if part != "")
        lines.append(f"{loc}: {err['msg']}")
    return lines


def validate_job_config(
    raw: dict[str, Any], method_schema: type[BaseModel], source: str | Path | None
) -> tuple[JobConfig, BaseModel]:
    """Validate the job part and the method part together; raise one error listing every problem."""
    problems: list[str] = []
    job = method_cfg = None
    try:
        job = JobConfig.model_validate(raw)
    except ValidationError as exc:
        problems += format_validation_errors(exc)
    try:
        method_cfg = method_schema.model_validate(raw.get("method") or {})
    except ValidationError as exc:
        problems += format_validation_errors(exc, prefix="method")
    if problems:
        raise CryorayInputError(source or "configuration", "config", "valid settings", "; ".join(problems))
    assert job is not None and method_cfg is not None
    return job, method_cfg
