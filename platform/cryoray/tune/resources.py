"""What a sweep's trials hold and how many run at once, sized from the cluster rather than from Tune's view of it."""

from __future__ import annotations

import math
import sys

from cryoray.config import JobConfig
from cryoray.errors import CryorayInputError

# A trial's own process only drives its TorchTrainer; the Train workers hold the real resources.
TRIAL_DRIVER_CPUS = 0.1
# Custom resource that cluster.yaml gives the on-demand head so trial drivers avoid spot nodes.
TRIAL_DRIVER_RESOURCE = "trial_driver"
# CPUs left free for Ray Data read tasks when sizing concurrency (each read task takes one CPU).
DATA_HEADROOM_CPUS = 1.0


def trial_driver_resources(cluster_resources: dict[str, float]) -> dict[str, float]:
    """What a trial's own actor holds: a fraction of a CPU, on the nodes that offer ``TRIAL_DRIVER_RESOURCE`` if any do."""
    resources: dict[str, float] = {"cpu": TRIAL_DRIVER_CPUS}
    if cluster_resources.get(TRIAL_DRIVER_RESOURCE):
        resources[TRIAL_DRIVER_RESOURCE] = 1
    return resources


def trial_concurrency(
    requested: int | None,
    edge_jobs: list[JobConfig],
    cluster_resources: dict[str, float],
    joined_cluster: bool,
    spec_path: str | None = None,
) -> int:
    """How many trials run at once: what the cluster's CPUs/GPUs hold for the largest trial of the space.

    Tune counts only the trial drivers' fraction of a CPU, so without this cap it would start trials whose
    Train workers cannot be placed. A local Ray is capped (with a warning); a joined cluster may autoscale, so
    there a larger request stands and only a warning is printed.
    """
    cpus_per_trial = max(TRIAL_DRIVER_CPUS + job.num_workers * job.train.cpus_per_worker for job in edge_jobs)
    gpus_per_trial = max(job.num_workers if job.use_gpu else 0 for job in edge_jobs)
    cpus, gpus = cluster_resources.get("CPU", 0), cluster_resources.get("GPU", 0)
    if not joined_cluster and (cpus_per_trial > cpus or gpus_per_trial > gpus):
        # Ray would wait forever for resources a local machine will never have.
        raise CryorayInputError(
            spec_path,
            "num_workers, train.cpus_per_worker, use_gpu",
            f"a trial that fits this machine ({cpus:g} CPUs, {gpus:g} GPUs)",
            f"{cpus_per_trial:g} CPUs and {gpus_per_trial} GPUs per trial",
        )
    fits = math.floor(max(cpus - DATA_HEADROOM_CPUS, 0) / cpus_per_trial)
    if gpus_per_trial:
        fits = min(fits, math.floor(gpus / gpus_per_trial))
    fits = max(fits, 1)
    if requested is None:
        return fits
    if requested > fits:
        action = "the autoscaler must add nodes for the rest" if joined_cluster else f"running {fits} at a time"
        print(
            f"cryoray sweep: max_concurrent_trials={requested} but the cluster now holds {fits} trial(s) of "
            f"{cpus_per_trial:g} CPU(s) and {gpus_per_trial} GPU(s) (plus {DATA_HEADROOM_CPUS:g} CPU for Ray Data); {action}",
            file=sys.stderr,
            flush=True,
        )
        return requested if joined_cluster else fits
    return requested
