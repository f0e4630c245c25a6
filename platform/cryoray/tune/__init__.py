"""The one Ray Tune driver of the platform: every method's sweep (``tuning/<method>.yaml``) runs through it.

Pattern (Ray 2.60, Train V2): a ``Tuner`` over a light trial function that holds a fraction of a CPU and
trains the method with the generic runner (``run_training``), whose ``TuneReportCallback`` forwards every
epoch report to Tune, so schedulers (ASHA) see epoch metrics. MLflow: one parent run per sweep and one nested
child run per trial (the runner logs the epoch metrics into it). Tune kills the trial actor of a trial it
stops, so code after ``run_training`` never runs there: the driver finalises every child run after ``fit()``.
A trial's Train run is named after its trial id, so a restarted trial resumes from its own checkpoint.

Modules: ``spec`` (the sweep spec and its checks), ``resources`` (what a trial holds, how many run at once),
``trial`` (the trainable and its child run), ``results`` (``summary.csv``, ``best.json``, the outcome) and
``driver`` (``run_sweep``).
"""

from cryoray.tune.driver import run_sweep
from cryoray.tune.results import SweepFailedError, SweepOutcome

__all__ = ["SweepFailedError", "SweepOutcome", "run_sweep"]
