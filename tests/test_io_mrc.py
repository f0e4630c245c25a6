"""MRC reading/writing: voxel sizes survive, bad files fail with the file named."""

from __future__ import annotations

import gzip
import shutil
import warnings

import mrcfile
import numpy as np
import pytest
from cryoray.errors import CryorayInputError
from cryoray.io.mrc import open_stack_mmap, read_mrc, read_mrc_shape, write_mrc


def test_round_trip_keeps_data_and_voxel_size(tmp_path):
    volume = np.random.default_rng(0).normal(size=(6, 7, 8)).astype(np.float32)
    path = write_mrc(tmp_path / "map.mrc", volume, voxel_size_angstrom=2.806)
    read = read_mrc(path)
    np.testing.assert_array_equal(read.data, volume)
    assert read.voxel_size_angstrom == 2.806
    assert read.data.dtype == np.float32


def test_stack_round_trip_gz_and_header(tmp_path):
    stack = np.random.default_rng(1).normal(size=(4, 16, 16))
    path = write_mrc(tmp_path / "images.mrcs.gz", stack, voxel_size_angstrom=1.31)
    read = read_mrc(path)
    np.testing.assert_allclose(read.data, stack, rtol=1e-6)
    assert read.voxel_size_angstrom == 1.31
    plain = write_mrc(tmp_path / "images.mrcs", stack, voxel_size_angstrom=1.31)
    with mrcfile.open(plain) as mrc:
        assert mrc.is_image_stack()
    assert read_mrc_shape(plain) == (4, 16, 16)


def test_refuses_to_overwrite(tmp_path):
    path = write_mrc(tmp_path / "map.mrc", np.zeros((4, 4, 4)), 1.5)
    with pytest.raises(CryorayInputError, match="overwrite=True"):
        write_mrc(path, np.ones((4, 4, 4)), 1.5)
    assert read_mrc(path).data.max() == 0.0
    write_mrc(path, np.ones((4, 4, 4)), 1.5, overwrite=True)
    assert read_mrc(path).data.min() == 1.0


def test_missing_voxel_size_names_the_file(tmp_path):
    path = tmp_path / "novoxel.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.zeros((4, 4, 4), dtype=np.float32))
    with pytest.raises(CryorayInputError, match="voxel_size_angstrom") as err:
        read_mrc(path)
    assert str(path) in str(err.value)
    assert read_mrc(path, voxel_size_angstrom=3.2).voxel_size_angstrom == 3.2


def test_header_voxel_size_one_is_kept_and_can_be_overridden(tmp_path):
    path = write_mrc(tmp_path / "one.mrc", np.zeros((4, 4, 4)), 1.0)
    assert read_mrc(path).voxel_size_angstrom == 1.0
    assert read_mrc(path, voxel_size_angstrom=12.0).voxel_size_angstrom == 12.0


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_data_is_refused(tmp_path, bad):
    path = tmp_path / "bad.mrc"
    data = np.zeros((4, 4, 4), dtype=np.float32)
    data[1, 2, 3] = bad
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with mrcfile.new(path) as mrc:
            mrc.set_data(data)
            mrc.voxel_size = 2.0
    with pytest.raises(CryorayInputError, match=r"bad\.mrc: data: expected finite values"):
        read_mrc(path)
    with pytest.raises(CryorayInputError, match="array"):
        write_mrc(tmp_path / "out.mrc", data, 2.0)


def test_garbage_and_missing_files_fail_clearly(tmp_path):
    garbage = tmp_path / "garbage.mrc"
    garbage.write_bytes(b"not an mrc file at all" * 10)
    with pytest.raises(CryorayInputError, match="garbage.mrc"):
        read_mrc(garbage)
    with pytest.raises(CryorayInputError, match="no such file"):
        read_mrc(tmp_path / "absent.mrc")
    complex_map = tmp_path / "complex.mrc"
    with mrcfile.new(complex_map) as mrc:
        mrc.set_data(np.zeros((4, 4, 4), dtype=np.complex64))
    with pytest.raises(CryorayInputError, match="complex.mrc: mode"):
        read_mrc(complex_map)


def test_mmap_stack_streams_without_loading(tmp_path):
    stack = np.arange(3 * 8 * 8, dtype=np.float32).reshape(3, 8, 8)
    path = write_mrc(tmp_path / "s.mrcs", stack, 4.0)
    mapped = open_stack_mmap(path)
    assert isinstance(mapped.data, np.memmap)
    assert len(mapped) == 3 and mapped.voxel_size_angstrom == 4.0
    np.testing.assert_array_equal(mapped.data[2], stack[2])
    gz = tmp_path / "s.mrcs.gz"
    with open(path, "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    with pytest.raises(CryorayInputError, match="gunzip"):
        open_stack_mmap(gz)


def test_real_files(shared_data):
    stack = read_mrc(shared_data / "cryodrgn" / "relion31.mrcs", voxel_size_angstrom=2.806)  # lacks the MAP id
    assert stack.data.shape == (5, 256, 256) and stack.voxel_size_angstrom == 2.806
    emdb = read_mrc(shared_data / "sfftk" / "emd_1832.map")
    assert emdb.data.shape == (64, 64, 64) and emdb.voxel_size_angstrom == pytest.approx(5.7)
    template = read_mrc(shared_data / "polnet" / "templates_10A" / "1bxn.mrc.gz")
    assert template.data.shape == (52, 52, 52) and template.voxel_size_angstrom == 10.0
    with pytest.raises(CryorayInputError, match="empiar_10076_7.mrc: voxel size"):
        read_mrc(shared_data / "cryodrgn" / "empiar_10076_7.mrc")
    assert open_stack_mmap(shared_data / "cryodrgn" / "empiar_10076_7.mrc", 1.31).data.shape == (7, 320, 320)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        micro_ed = read_mrc(shared_data / "mrcfile" / "EMD-3001.map")
    assert micro_ed.voxel_size_angstrom == pytest.approx(0.44825)
    assert any("differs between axes" in str(w.message) for w in caught)
