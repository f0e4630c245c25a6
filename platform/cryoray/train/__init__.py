"""Training: the Method contract (``method``), the per-worker context, the Ray-free step (``loop``) and the one
generic Ray Train runner (``runner.run_training``)."""
