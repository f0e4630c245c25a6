"""The console's lines: durations, the step and epoch lines, and plain-line progress of long commands."""

from __future__ import annotations

import io
import logging
import sys

import pytest
from cryoray import console


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0s"), (42, "42s"), (185, "3m05s"), (7620, "2h07m")])
def test_durations_read_at_the_precision_a_reader_needs(seconds, text):
    assert console.format_duration(seconds) == text


def test_the_step_line_names_each_term_optimiser_speed_and_eta():
    line = console.step_line(
        epoch=1,
        epochs=10,
        step=40,
        steps=80,
        metrics={"weighted_dice": 0.41234, "alpha": 0.05},
        learning_rates={"segmenter": 0.2},
        grad_norms={"segmenter": 1.5},
        samples_per_s=31.25,
        data_wait_fraction=0.123,
        eta_s=250,
    )
    assert line == (
        "epoch 2/10 step 40/80 | weighted_dice 0.4123 alpha 0.05 | lr 0.2 | grad_norm 1.5 | 31.2 samples/s"
        " | data wait 12% | ETA 4m10s"
    )
    two = console.step_line(0, 1, 1, 1, {"g": 1.0}, {"generator": 1e-4, "discriminator": 4e-4}, {}, 1.0, 0.0, 0)
    assert "lr[generator] 0.0001 lr[discriminator] 0.0004" in two and "grad_norm" not in two


def test_the_epoch_line_shows_key_metrics_first_then_the_train_means():
    metrics = {"epoch_seconds": 96.0, "data_wait_fraction": 0.25, "eval_seconds": 12.0, "val_f1_macro": 0.93}
    metrics |= {"train_weighted_dice": 0.3, "val_f1/hitbox/tiny": 0.5}
    line = console.epoch_line(1, 2, metrics, ["val_f1_macro", "not_reported"])
    assert line == "epoch 2/2 done in 1m36s (data wait 25%, eval 12s) | val_f1_macro 0.93 | train_weighted_dice 0.3"


def test_progress_yields_every_item_and_reports_the_end(caplog):
    console.configure("normal")
    console.LOGGER.propagate = True  # for caplog
    try:
        with caplog.at_level(logging.INFO, logger="cryoray"):
            assert list(console.progress(range(5), 5, "tomograms", every_s=3600)) == list(range(5))
    finally:
        console.LOGGER.propagate = False
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["tomograms: 5/5 (100%)"]


def test_progress_on_a_terminal_is_one_bar_redrawn_in_place(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    console.configure("normal")
    assert list(console.progress(range(3), 3, "shards")) == [0, 1, 2]
    text = terminal.getvalue()
    assert text.startswith("\rshards: [") and text.endswith("\n") and text.count("\n") == 1
    assert "[####################] 3/3 (100%)" in text
    console.configure("quiet")
    terminal.truncate(0)
    terminal.seek(0)
    assert list(console.progress(range(3), 3, "shards")) == [0, 1, 2] and terminal.getvalue() == ""
    console.configure("normal")


def test_quiet_leaves_only_warnings_and_errors():
    console.configure("quiet")
    try:
        assert not console.LOGGER.isEnabledFor(logging.INFO) and console.LOGGER.isEnabledFor(logging.WARNING)
        assert console.ray_log_level() == "WARNING"
    finally:
        console.configure("normal")
    assert console.LOGGER.isEnabledFor(logging.INFO)
