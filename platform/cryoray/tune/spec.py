"""Sweep specs (``tuning/<method>.yaml``): schema, the job settings each trial gets, and the checks that run
before any trial starts.

A spec is validated twice: by its own schema (unknown keys, malformed distributions), then by the method's
job schema at the edges of the search space (base settings with each range's low and high and every choice),
so a value the method would reject fails the sweep in seconds with the spec file and field named, instead of
failing trials one by one on the cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ray import tune

from cryoray.config import JobConfig, deep_update, format_validation_errors, read_yaml_config, validate_job_config
from cryoray.errors import CryorayInputError
from cryoray.methods import METHODS, load_method
from cryoray.train.method import Method

# Per-trial job settings the sweep driver assigns; a spec may not set them.
TRIAL_OWNED_KEYS = ("output_dir", "run_name", "overwrite")
# Sweep-wide settings: a spec's base may give defaults for them, its search space may not vary them.
SWEEP_WIDE_KEYS = ("tracking_uri", "storage_path", "experiment_name")
# Stands in for the per-trial output dir while validating settings before any trial exists.
_PLACEHOLDER_OUTPUT_DIR = "<trial output dir>"


class Distribution(BaseModel):
    """One search dimension; exactly one key is set. Ranges are ``[low, high]``, ``randint`` includes high."""

    model_config = ConfigDict(extra="forbid")
    loguniform: tuple[float, float] | None = None
    uniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None
    choice: list[Any] | None = Field(None, min_length=1)
    grid: list[Any] | None = Field(None, min_length=1, description="every value, in every sample")

    @model_validator(mode="after")
    def _one_valid_kind(self) -> Distribution:
        kinds = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(kinds) != 1:
            raise ValueError(f"exactly one of {', '.join(type(self).model_fields)} (got {kinds or 'none'})")
        if self.loguniform is not None and not 0 < self.loguniform[0] < self.loguniform[1]:
            raise ValueError(f"loguniform [low, high] with 0 < low < high, got {list(self.loguniform)}")
        for kind in ("uniform", "randint"):
            bounds = getattr(self, kind)
            if bounds is not None and not bounds[0] < bounds[1]:
                raise ValueError(f"{kind} [low, high] with low < high, got {list(bounds)}")
        return self

    def to_tune(self) -> Any:
        """The Ray Tune search object for this dimension."""
        if self.loguniform is not None:
            return tune.loguniform(*self.loguniform)
        if self.uniform is not None:
            return tune.uniform(*self.uniform)
        if self.randint is not None:
            return tune.randint(self.randint[0], self.randint[1] + 1)  # Tune excludes the upper bound
        if self.choice is not None:
            return tune.choice(self.choice)
        return tune.grid_search(self.grid)

    def edge_values(self) -> list[Any]:
        """The values checked against the method's schema before launch: both bounds, or every value."""
        for bounds in (self.loguniform, self.uniform, self.randint):
            if bounds is not None:
                return list(bounds)
        values = self.choice if self.choice is not None else self.grid
        assert values is not None  # _one_valid_kind: exactly one kind is set
        return list(values)


class SchedulerSpec(BaseModel):
    """Trial scheduler; ASHA stops trials whose metric lags at each rung (needs the Ray dashboard)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["none", "asha"] = "none"
    grace_period_epochs: int = Field(default=1, ge=1, description="epochs every trial runs before it can be stopped")
    reduction_factor: float = Field(default=2.0, gt=1, description="1/reduction_factor of trials go on at each rung")
    max_t_epochs: int | None = Field(
        default=None,
        ge=1,
        description="last rung (trials past it run to the end); default: one less than the largest train.epochs",
    )


class SmokeSpec(BaseModel):
    """What ``--smoke`` changes: settings merged over ``base`` and a smaller budget."""

    model_config = ConfigDict(extra="forbid")
    base: dict[str, Any] = Field(default_factory=dict, description="merged over base; dataset defaults to the method's smoke set")
    num_samples: int | None = Field(default=None, ge=1)
    max_concurrent_trials: int | None = Field(default=None, ge=1)
    scheduler: SchedulerSpec | None = None


class SweepSpec(BaseModel):
    """A hyperparameter sweep of one method, trained by the generic runner in every trial."""

    model_config = ConfigDict(extra="forbid")
    job: str = Field(description="method name, as its job script jobs/<job>.py")
    base: dict[str, Any] = Field(default_factory=dict, description="job settings, as a job's --config YAML")
    search_space: dict[str, Distribution] = Field(min_length=1, description="dotted job key -> distribution")
    metric: str = Field(description="a key metric of the method (Method.key_metrics) or train_<step metric>")
    mode: Literal["min", "max"]
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    num_samples: int = Field(1, ge=1, description="samples of the space; each grid point is run num_samples times")
    max_concurrent_trials: int | None = Field(None, ge=1, description="default: what the cluster's CPUs/GPUs hold")
    max_trial_failures: int = Field(1, ge=0, description="restarts of a trial; it resumes from its Train checkpoint")
    seed: int = Field(0, description="seed of the search-space sampler")
    smoke: SmokeSpec = Field(default_factory=SmokeSpec)


class SweepPlan(BaseModel):
    """A spec resolved for one launch: the settings every trial starts from and the effective budget."""

    spec: SweepSpec
    spec_path: str
    base: dict[str, Any]
    scheduler: SchedulerSpec
    num_samples: int
    max_concurrent_trials: int | None


def load_sweep_spec(path: str | Path) -> SweepSpec:
    """Parse and check a spec file: one ``CryorayInputError`` naming the file and every bad field."""
    raw = read_yaml_config(path)
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as exc:
        problems = format_validation_errors(exc)
        raise CryorayInputError(path, _fields(problems), "a valid sweep spec", "; ".join(problems)) from None
    if spec.job not in METHODS:
        raise CryorayInputError(path, "job", f"a registered method ({', '.join(sorted(METHODS))})", spec.job)
    _check_metric(spec, path)
    problems = [f"base.{key}: set per trial by the sweep driver" for key in TRIAL_OWNED_KEYS if key in spec.base]
    problems += [f"smoke.base.{key}: set per trial by the sweep driver" for key in TRIAL_OWNED_KEYS if key in spec.smoke.base]
    problems += [
        f"search_space.{key}: a sweep-wide or per-trial setting cannot be searched"
        for key in spec.search_space
        if key.split(".")[0] in TRIAL_OWNED_KEYS + SWEEP_WIDE_KEYS
    ]
    if problems:
        raise CryorayInputError(path, _fields(problems), "a valid sweep spec", "; ".join(problems))
    return spec


def _check_metric(spec: SweepSpec, path: str | Path) -> None:
    """The metric must be one the method reports under that name, ranked in its better direction, or the epoch mean
    of a step metric (``train_<name>``, minimised or maximised as the spec says)."""
    key_metrics = load_method(spec.job).key_metrics
    if spec.metric.startswith("train_"):
        return
    if spec.metric not in key_metrics:
        expected = f"one of {spec.job}'s epoch metrics ({', '.join(key_metrics)}) or train_<step metric>"
        raise CryorayInputError(path, "metric", expected, spec.metric)
    if spec.mode != key_metrics[spec.metric]:
        raise CryorayInputError(path, "mode", f"{key_metrics[spec.metric]} ({spec.metric} is better that way)", spec.mode)


def plan_sweep(spec: SweepSpec, spec_path: str | Path, method: Method, smoke: bool, num_samples: int | None) -> SweepPlan:
    """Merge the method's preset < base < smoke block (``--smoke``) and the budget overrides into what this launch runs."""
    entry = METHODS[method.name]
    base = deep_update(deep_update({"dataset": entry.default_dataset}, method.default_preset), spec.base)
    scheduler, samples, concurrency = spec.scheduler, spec.num_samples, spec.max_concurrent_trials
    if smoke:
        base = deep_update(base, deep_update({"dataset": entry.smoke_dataset}, spec.smoke.base))
        scheduler = spec.smoke.scheduler or scheduler
        samples = spec.smoke.num_samples or samples
        concurrency = spec.smoke.max_concurrent_trials or concurrency
    return SweepPlan(
        spec=spec,
        spec_path=str(spec_path),
        base=base,
        scheduler=scheduler,
        num_samples=num_samples or samples,
        max_concurrent_trials=concurrency,
    )


def unflatten(dotted: dict[str, Any]) -> dict[str, Any]:
    """{'method.learning_rate': 0.01} -> {'method': {'learning_rate': 0.01}}."""
    nested: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def trial_settings(
    base: dict[str, Any], sampled: dict[str, Any], output_dir: str = _PLACEHOLDER_OUTPUT_DIR, run_name: str | None = None
) -> dict[str, Any]:
    """One trial's raw job settings: the base with the sampled dotted keys set, and its own output dir."""
    raw = deep_update(base, unflatten(sampled))
    raw.update({"output_dir": output_dir, "run_name": run_name})
    return raw


def check_search_space(plan: SweepPlan, method: Method) -> list[JobConfig]:
    """Validate the base and every edge value of the search space with the job and method schemas.

    Returns the validated configurations (the driver sizes trial resources from the largest); raises one
    ``CryorayInputError`` naming the spec file and each offending field (only ``base`` when the base is bad,
    since every edge would repeat its problems).
    """
    edges: list[tuple[str, dict[str, Any]]] = [("base", {})]
    edges += [
        (f"search_space.{key}", {key: value})
        for key, distribution in plan.spec.search_space.items()
        for value in distribution.edge_values()
    ]
    jobs: list[JobConfig] = []
    problems: list[str] = []
    fields: list[str] = []
    for field, sampled in edges:
        label = ", ".join(f"{key}={value!r}" for key, value in sampled.items()) or "base"
        try:
            job, _ = validate_job_config(trial_settings(plan.base, sampled), method.config_schema, None)
        except CryorayInputError as exc:
            problems.append(f"{label}: {exc.got}")
        else:
            if job.num_workers >= 1:
                jobs.append(job)
                continue
            problems.append(f"{label}: num_workers: a trial needs a Ray Train worker (its reports reach Tune through them)")
        fields.append(field)
        if field == "base":
            break
    if problems:
        fields_named = ", ".join(dict.fromkeys(fields))
        raise CryorayInputError(plan.spec_path, fields_named, "settings the method accepts", "; ".join(problems))
    return jobs


def _fields(problems: list[str]) -> str:
    """The field paths in 'field: message' problem lines, for the error's field slot."""
    return ", ".join(dict.fromkeys(problem.split(": ")[0] for problem in problems))
