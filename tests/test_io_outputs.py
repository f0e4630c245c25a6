"""Output folders and files: a write is whole or absent, a failed command removes what it created and nothing else,
and a failing writer leaves no partial file behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cryoray.errors import CryorayInputError
from cryoray.io.mrc import check_mrc, write_mrc
from cryoray.io.outputs import atomic_write, check_output_dir, removed_on_failure
from cryoray.io.validate import check_finite


def test_a_failed_write_leaves_neither_the_file_nor_a_temporary(tmp_path: Path) -> None:
    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "out.txt", half_then_fail)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept.txt").write_text("old")
    with pytest.raises(OSError):
        atomic_write(tmp_path / "kept.txt", half_then_fail)
    assert [p.name for p in tmp_path.iterdir()] == ["kept.txt"] and (tmp_path / "kept.txt").read_text() == "old"


def test_a_failure_removes_what_the_run_created_and_keeps_what_was_there(tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper"
    with pytest.raises(RuntimeError), removed_on_failure(out, ["a.mrc", "result.json"]):
        write_mrc(out / "a.mrc", np.zeros((4, 4, 4)), 1.0)
        (out / ".result.json.1234abcd.tmp").write_text("half")  # what a killed writer leaves
        raise RuntimeError("worker died")
    assert list(tmp_path.iterdir()) == []  # the files and both folders it made are gone
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    (existing / "a.mrc").write_text("an older output, replaced by the run")
    with pytest.raises(KeyboardInterrupt), removed_on_failure(existing, ["a.mrc", "b.mrc"]):
        write_mrc(existing / "a.mrc", np.zeros((4, 4, 4)), 1.0, overwrite=True)
        write_mrc(existing / "b.mrc", np.zeros((4, 4, 4)), 1.0)
        (existing / "c.txt").write_text("not one of the run's names")
        raise KeyboardInterrupt
    assert sorted(p.name for p in existing.iterdir()) == ["c.txt", "notes.txt"]
    with removed_on_failure(existing, ["d.mrc"]):  # success: nothing is removed
        write_mrc(existing / "d.mrc", np.zeros((4, 4, 4)), 1.0)
    assert (existing / "d.mrc").is_file()


def test_an_output_path_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes").write_text("mine")
    with pytest.raises(CryorayInputError, match="notes is a file"):
        check_output_dir(tmp_path / "notes" / "out", "--output-dir", overwrite=True)
    assert check_output_dir(tmp_path / "new", "--output-dir", overwrite=False) == (tmp_path / "new").resolve()


def test_nan_is_found_in_any_slab_and_reported_at_its_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cryoray.io.validate.CHUNK_VALUES", 16)  # one 4 x 4 image per slab
    data = np.zeros((5, 4, 4), np.float32)
    data[3, 2, 1] = np.nan
    data[4, 0, 0] = np.inf
    with pytest.raises(CryorayInputError, match=r"2 NaN/Inf values, the first at index \(3, 2, 1\)"):
        check_finite(data, "x.mrcs")
    path = write_mrc(tmp_path / "stack.mrcs", np.ones((5, 4, 4)), 2.0)
    assert check_mrc(path, "stack").shape == (5, 4, 4)
