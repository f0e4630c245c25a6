"""The one generic Ray Train runner (``runner.run_training``) and the per-worker context."""
