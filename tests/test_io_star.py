"""STAR particle tables and picks: real RELION 2/3.0/3.1/5 files, bad files, round trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile
from cryoray.errors import CryorayInputError
from cryoray.io.mrc import open_stack_mmap
from cryoray.io.star import (
    ParticleTable,
    TomogramFrame,
    read_coordinates,
    read_particles_star,
    write_coordinates,
    write_particles_star,
)

OPTICS = """
data_optics

loop_
_rlnOpticsGroup
_rlnVoltage
_rlnSphericalAberration
_rlnAmplitudeContrast
_rlnImagePixelSize
_rlnImageSize
1 300.0 2.7 0.07 1.5 32
"""
PARTICLES_HEADER = """
data_particles

loop_
_rlnImageName
_rlnOpticsGroup
_rlnAngleRot
_rlnAngleTilt
_rlnAnglePsi
_rlnOriginXAngst
_rlnOriginYAngst
_rlnDefocusU
_rlnDefocusV
_rlnDefocusAngle
"""
GOOD_ROWS = [
    "000001@stack.mrcs 1 10.0 20.0 30.0 0.5 -0.5 15000 14800 45.0",
    "000002@stack.mrcs 1 11.0 21.0 31.0 1.5 -1.5 16000 15800 46.0",
    "000003@stack.mrcs 1 12.0 22.0 32.0 2.5 -2.5 17000 16800 47.0",
]


def _write(tmp_path: Path, rows: list[str], header: str = PARTICLES_HEADER, optics: str = OPTICS) -> Path:
    path = tmp_path / "particles.star"
    path.write_text(optics + header + "\n".join(rows) + "\n")
    return path


def test_small_relion31_file_is_normalised(tmp_path):
    table = read_particles_star(_write(tmp_path, GOOD_ROWS))
    p = table.particles
    assert list(p["image_index"]) == [0, 1, 2]
    assert p["image_path"].iloc[0] == str(tmp_path / "stack.mrcs")
    np.testing.assert_allclose(p["tilt_deg"], [20.0, 21.0, 22.0])
    np.testing.assert_allclose(p["shift_y_angstrom"], [-0.5, -1.5, -2.5])
    assert (p["pixel_size_angstrom"] == 1.5).all() and (p["box_px"] == 32).all()
    assert (p["voltage_kv"] == 300.0).all() and (p["phase_shift_deg"] == 0.0).all()
    assert table.has_poses and table.has_ctf


def test_image_dir_overrides_the_star_folder(tmp_path):
    table = read_particles_star(_write(tmp_path, GOOD_ROWS), image_dir="/data/project")
    assert table.particles["image_path"].iloc[0] == "/data/project/stack.mrcs"


def test_missing_column_is_named(tmp_path):
    header = PARTICLES_HEADER.replace("_rlnDefocusV\n", "")
    rows = [" ".join(r.split()[:8] + r.split()[9:]) for r in GOOD_ROWS]
    with pytest.raises(CryorayInputError) as err:
        read_particles_star(_write(tmp_path, rows, header=header))
    message = str(err.value)
    assert "particles.star" in message and "rlnDefocusV" in message


@pytest.mark.parametrize("bad", ["nan", "abc"])
def test_bad_defocus_names_column_and_row(tmp_path, bad):
    rows = list(GOOD_ROWS)
    rows[1] = rows[1].replace("15800", bad)
    with pytest.raises(CryorayInputError) as err:
        read_particles_star(_write(tmp_path, rows))
    message = str(err.value)
    assert "particles.star" in message and "rlnDefocusV" in message and "row 2" in message


def test_unknown_optics_group_is_refused(tmp_path):
    rows = list(GOOD_ROWS)
    rows[2] = rows[2].replace("stack.mrcs 1", "stack.mrcs 7")
    with pytest.raises(CryorayInputError) as err:
        read_particles_star(_write(tmp_path, rows))
    message = str(err.value)
    assert "particles.star" in message and "rlnOpticsGroup" in message and "7 in row 3" in message


def test_missing_pixel_size_is_named(tmp_path):
    optics = OPTICS.replace("_rlnImagePixelSize\n", "").replace(" 1.5 32", " 32")
    with pytest.raises(CryorayInputError, match="rlnImagePixelSize"):
        read_particles_star(_write(tmp_path, GOOD_ROWS, optics=optics))


def test_bad_image_name_and_not_a_star(tmp_path):
    rows = list(GOOD_ROWS)
    rows[0] = rows[0].replace("000001@", "first@")
    with pytest.raises(CryorayInputError, match="rlnImageName.*row 1"):
        read_particles_star(_write(tmp_path, rows))
    with pytest.raises(CryorayInputError, match="no such file"):
        read_particles_star(tmp_path / "absent.star")


def test_write_read_round_trip(tmp_path):
    original = read_particles_star(_write(tmp_path, GOOD_ROWS))
    (tmp_path / "out").mkdir()
    out = write_particles_star(tmp_path / "out" / "copy.star", original)
    assert "000001@../stack.mrcs" not in out.read_text()  # outside the STAR's folder: written absolute
    again = read_particles_star(out)
    pd.testing.assert_frame_equal(original.particles, again.particles, check_exact=False, atol=1e-6)
    with pytest.raises(CryorayInputError, match="overwrite=True"):
        write_particles_star(out, original)


def test_write_from_plain_dataframe_groups_optics(tmp_path):
    frame = pd.DataFrame(
        {
            "image_index": [0, 1, 2],
            "image_path": [str(tmp_path / "a.mrcs")] * 3,
            "rot_deg": [1.0, 2.0, 3.0],
            "tilt_deg": [4.0, 5.0, 6.0],
            "psi_deg": [7.0, 8.0, 9.0],
            "pixel_size_angstrom": [1.0, 1.0, 2.0],
            "box_px": [16, 16, 16],
            "voltage_kv": [300.0, 300.0, 200.0],
        }
    )
    path = write_particles_star(tmp_path / "plain.star", frame)
    assert "000001@a.mrcs" in path.read_text()
    table = read_particles_star(path)
    assert len(table.optics) == 2 and list(table.particles["optics_group"]) == [1, 1, 2]
    np.testing.assert_allclose(table.particles["pixel_size_angstrom"], [1.0, 1.0, 2.0])
    assert not table.has_ctf
    frame.loc[1, "rot_deg"] = np.nan
    with pytest.raises(CryorayInputError, match="rot_deg.*row 2"):
        write_particles_star(tmp_path / "nan.star", frame)


def test_relion31_real_file_and_optics_after_particles(shared_data):
    first = read_particles_star(shared_data / "cryodrgn" / "relion31.star")
    second = read_particles_star(shared_data / "cryodrgn" / "relion31.v2.star")
    assert isinstance(first, ParticleTable) and len(first) == 5
    pd.testing.assert_frame_equal(first.particles, second.particles)
    pd.testing.assert_frame_equal(first.optics, second.optics)
    p = first.particles
    assert (p["pixel_size_angstrom"] == 2.806).all() and (p["box_px"] == 256).all()
    assert p["image_path"].iloc[0] == str(shared_data / "cryodrgn" / "relion31.mrcs")
    assert p["rot_deg"].iloc[0] == pytest.approx(-102.30296)
    assert p["shift_x_angstrom"].iloc[0] == pytest.approx(0.019324)
    assert p["defocus_u_angstrom"].iloc[0] == pytest.approx(13108.082418)
    stack = open_stack_mmap(p["image_path"].iloc[0], voxel_size_angstrom=p["pixel_size_angstrom"].iloc[0])
    assert stack.data.shape == (5, 256, 256) and stack.voxel_size_angstrom == 2.806
    assert p["image_index"].max() < len(stack)


def test_relion5_and_cryojax_files(shared_data):
    relion5 = read_particles_star(shared_data / "cryodrgn" / "relion5.star")
    assert len(relion5) == 17 and (relion5.particles["pixel_size_angstrom"] == 0.89).all()
    assert (relion5.particles["voltage_kv"] == 100.0).all() and (relion5.particles["box_px"] == 448).all()
    assert set(Path(p).name for p in relion5.particles["image_path"]) == {"toy_images_a.mrcs", "toy_images_b.mrcs"}
    cryojax = read_particles_star(shared_data / "cryojax" / "test_starfile.star")
    assert len(cryojax) == 3 and (cryojax.particles["pixel_size_angstrom"] == 12.0).all()
    assert cryojax.particles["shift_x_angstrom"].iloc[0] == pytest.approx(32.05603)


def test_relion2_pixel_size_from_detector_and_magnification(shared_data):
    table = read_particles_star(shared_data / "cryodrgn" / "empiar_10076_7.star")
    p = table.particles
    assert len(table) == 7 and not table.has_poses and table.has_ctf
    np.testing.assert_allclose(p["pixel_size_angstrom"], 5e4 / 38168)
    assert (p["box_px"] == 320).all()  # from the stack's header: RELION 2 files carry no image size
    assert list(p["image_index"]) == list(range(7))


def test_relion30_origins_in_pixels(shared_data):
    table = read_particles_star(shared_data / "aspire" / "sample_relion_data.star")
    p = table.particles
    np.testing.assert_allclose(p["pixel_size_angstrom"], 5e4 / 37369.207031)
    np.testing.assert_allclose(p["shift_x_angstrom"].iloc[0], 0.1996 * 5e4 / 37369.207031)
    assert len(table.optics) == 1 and (p["box_px"] == 200).all()


def test_real_file_round_trip(tmp_path, shared_data):
    for name in ("relion31.6opticsgroups.star", "empiar_10076_7.star"):
        original = read_particles_star(shared_data / "cryodrgn" / name)
        again = read_particles_star(write_particles_star(tmp_path / name, original))
        pd.testing.assert_frame_equal(original.particles, again.particles, check_exact=False, atol=1e-5)
        columns = list(original.optics.columns)
        pd.testing.assert_frame_equal(original.optics, again.optics[columns], check_exact=False, atol=1e-5)


def test_coordinates_star_csv_round_trip(tmp_path, shared_data):
    picks = read_coordinates(shared_data / "chlamy_annotations" / "waltz2025" / "hsp60.star")
    assert len(picks) == 27 and {"x_px", "y_px", "z_px", "class_id", "rot_deg", "tomo_name"} <= set(picks.columns)
    assert (picks["class_id"] == 1).all()
    picks["score"] = np.linspace(0.0, 1.0, len(picks))
    from_star = read_coordinates(write_coordinates(tmp_path / "picks.star", picks))
    from_csv = read_coordinates(write_coordinates(tmp_path / "picks.csv", picks))
    pd.testing.assert_frame_equal(from_star, from_csv, check_exact=False, atol=1e-6)
    assert "rlnCoordinateZ" in (tmp_path / "picks.star").read_text()
    with pytest.raises(CryorayInputError, match="overwrite=True"):
        write_coordinates(tmp_path / "picks.csv", picks)


def test_picks_for_relion5_and_for_warp_relion4_read_back_with_starfile(tmp_path):
    """RELION 5: rlnTomoName + centred Ångström from size/2; Warp/RELION 4: voxels. Both read back to the same picks."""
    picks = pd.DataFrame(
        {
            "x_px": [0.0, 50.0, 99.5],
            "y_px": [10.0, 40.0, 79.0],
            "z_px": [5.0, 20.0, 39.0],
            "class_id": [1, 2, 2],
            "score": [0.5, 0.9, 0.7],
            "tomo_name": ["TS_01", "TS_01", "TS_02"],
        }
    )
    frames = {"TS_01": TomogramFrame((40, 80, 100), 10.0), "TS_02": TomogramFrame((40, 80, 120), 5.0)}
    relion5 = starfile.read(write_coordinates(tmp_path / "relion5.star", picks, frames=frames))
    assert list(relion5.columns[:4]) == ["rlnTomoName", *(f"rlnCenteredCoordinate{a}Angst" for a in "XYZ")]
    assert "rlnCoordinateX" not in relion5 and list(relion5["rlnClassNumber"]) == [1, 2, 2]
    np.testing.assert_allclose(relion5["rlnCenteredCoordinateXAngst"], [(0 - 50) * 10.0, 0.0, (99.5 - 60) * 5.0])
    np.testing.assert_allclose(relion5["rlnCenteredCoordinateZAngst"], [(5 - 20) * 10.0, 0.0, (39 - 20) * 5.0])
    np.testing.assert_allclose(relion5["rlnAutopickFigureOfMerit"], picks["score"])

    relion4 = starfile.read(write_coordinates(tmp_path / "relion4.star", picks))
    np.testing.assert_allclose(relion4[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]], picks[["x_px", "y_px", "z_px"]])
    assert list(relion4["rlnTomoName"]) == list(picks["tomo_name"])

    one = picks[picks["tomo_name"] == "TS_01"].reset_index(drop=True)
    path = write_coordinates(tmp_path / "ts01.star", one, frames=frames)
    pd.testing.assert_frame_equal(read_coordinates(path, frames["TS_01"]), read_coordinates(tmp_path / "relion4.star").iloc[:2])
    with pytest.raises(CryorayInputError, match="rlnCenteredCoordinateXAngst"):
        read_coordinates(path)  # centred coordinates need their tomogram
    with pytest.raises(CryorayInputError, match="rlnTomoName"):
        write_coordinates(tmp_path / "other.star", picks, frames={"TS_01": frames["TS_01"]})


def test_plain_csv_picks_and_bad_values(tmp_path):
    path = tmp_path / "picks.csv"
    path.write_text("x,y,z,class\n1,2,3,2\n4,5,6,1\n")
    picks = read_coordinates(path)
    assert list(picks.columns) == ["x_px", "y_px", "z_px", "class_id"]
    assert list(picks["class_id"]) == [2, 1]
    path.write_text("x,y,z\n1,2,3\n4,,6\n")
    with pytest.raises(CryorayInputError, match=r"picks\.csv: y.*row 2"):
        read_coordinates(path)
    path.write_text("x,y\n1,2\n")
    with pytest.raises(CryorayInputError, match="z_px"):
        read_coordinates(path)
