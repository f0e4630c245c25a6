"""Cryo2SSNet: the unbiased loss, quaternion distance, DHBS on a known map, GD enhancement, the stage
schedule, bad input, and learning on a tiny noiseless set (in-process, the method's own steps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cryoray.config import RunnerConfig
from cryoray.errors import CryorayInputError
from cryoray.io.manifest import DatasetManifest, ShardEntry
from cryoray.methods.cryo2ssnet import Cryo2SSNet, Cryo2SSNetConfig
from cryoray.methods.cryo2ssnet.networks import (
    HartleyDecoder,
    PoseEncoder,
)
from cryoray.methods.cryo2ssnet.search import quaternion_distance_squared, refine_poses, unbiased_l2
from cryoray.methods.single_particle import evaluate_reconstruction
from cryoray.physics import (
    axis_angle_to_matrix,
    geodesic_distance_deg,
    hopf_grid_resolution_deg,
    ht2_centered,
    ht3_centered,
    matrix_to_quaternion,
    quaternion_distance,
    random_rotations,
    standardize,
)
from cryoray.physics.image_formation import CTF_PARAMETERS
from cryoray.physics.pose_search import FourierDisc, PoseSearch, search_poses
from cryoray.simulate.particles import simulate_particle_stack
from cryoray.simulate.phantom import builtin_phantom
from cryoray.train.context import TrainContext
from cryoray.train.loop import steps_per_epoch, take_step


def _manifest(box_px: int, voxel: float, count: int, **provenance: object) -> DatasetManifest:
    return DatasetManifest(
        name="tiny",
        kind="particles",
        voxel_size_angstrom=voxel,
        box_px=box_px,
        count=count,
        shards=[ShardEntry(path="shards/none.parquet", count=count)],
        columns={},
        provenance=provenance,
    )


def test_unbiased_loss_matches_the_clean_l2_in_expectation() -> None:
    g = torch.Generator().manual_seed(0)
    clean = torch.nn.functional.avg_pool2d(torch.randn(1, 1, 36, 36, generator=g), 5, 1)[0, 0]  # smooth 32×32
    simulated = standardize(clean + 0.5 * torch.randn(clean.shape, generator=g), 2)
    target = float(((standardize(clean, 2) - simulated) ** 2).mean())
    for snr in (1.0, 0.1):
        sigma = clean.std() / snr**0.5
        noisy = standardize(clean + sigma * torch.randn(4000, *clean.shape, generator=g), 2)
        unbiased = float(unbiased_l2(noisy, simulated, snr).mean())
        plain = float(unbiased_l2(noisy, simulated, None).mean())
        assert unbiased == pytest.approx(target, abs=0.03 * (1 + 1 / snr) ** 0.5), (snr, unbiased, target)
        assert abs(plain - target) > 0.1  # the plain ℓ2 of noisy images is biased


def test_quaternion_distance_from_matrices() -> None:
    g = torch.Generator().manual_seed(1)
    R1, R2 = random_rotations(64, generator=g), random_rotations(64, generator=g)
    expected = quaternion_distance(matrix_to_quaternion(R1), matrix_to_quaternion(R2)) ** 2
    assert torch.allclose(quaternion_distance_squared(R1, R2), expected, atol=1e-5)
    assert torch.allclose(quaternion_distance_squared(R1, R1), torch.zeros(64), atol=1e-6)
    assert torch.allclose(quaternion_distance_squared(R1, R2), quaternion_distance_squared(R2, R1), atol=1e-6)
    # it is a function of the geodesic angle: 2 − 2 cos(θ/2)
    theta = torch.deg2rad(geodesic_distance_deg(R1, R2).double())
    assert torch.allclose(quaternion_distance_squared(R1, R2).double(), 2 - 2 * torch.cos(theta / 2), atol=1e-4)
    omega = torch.tensor([[1e-4, 0.0, 0.0]], requires_grad=True)  # finite gradient near coincidence
    quaternion_distance_squared(axis_angle_to_matrix(omega), torch.eye(3)[None]).sum().backward()
    assert torch.isfinite(omega.grad).all()


def test_encoder_outputs_rotations() -> None:
    R = PoseEncoder(24)(torch.randn(5, 24, 24))
    assert R.shape == (5, 3, 3)
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3).expand(5, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(R), torch.ones(5), atol=1e-5)


@pytest.fixture(scope="module")
def known_map() -> dict:
    """Noiseless CTF-free projections of the phantom at random poses, set against the true map."""
    box, count = 32, 64
    hartley = ht3_centered(torch.from_numpy(builtin_phantom(box)))
    truth = random_rotations(count, generator=torch.Generator().manual_seed(2))
    observed = HartleyDecoder.render(hartley, truth, None)
    disc = FourierDisc.build(box, box // 2)
    problem = PoseSearch(hartley, disc, disc.take(ht2_centered(observed)), None, "correlation")
    # an encoder-like first guess: the truth off by 10°
    axes = torch.nn.functional.normalize(torch.randn(count, 3, generator=torch.Generator().manual_seed(3)), dim=-1)
    initial = axis_angle_to_matrix(axes * np.deg2rad(10.0)) @ truth
    return {"problem": problem, "truth": truth, "initial": initial}


@pytest.mark.parametrize("depth", [3, 4])
def test_beam_search_from_the_encoder_finds_the_true_pose_to_the_grid_resolution(known_map: dict, depth: int) -> None:
    found, costs = search_poses(known_map["problem"], width=4, final_level=depth, initial=known_map["initial"])
    errors = geodesic_distance_deg(found, known_map["truth"])
    assert float(errors.quantile(0.9)) < hopf_grid_resolution_deg(depth), errors
    assert (costs <= known_map["problem"].cost(known_map["initial"][:, None])[:, 0]).all()


def test_global_search_from_no_guess_finds_the_global_pose(known_map: dict) -> None:
    """A random start (no encoder): at least 90 % of the noiseless images land within the final grid's spacing."""
    found, _ = search_poses(known_map["problem"], width=4, final_level=4, start_level=2)
    errors = geodesic_distance_deg(found, known_map["truth"])
    assert float((errors < hopf_grid_resolution_deg(4)).float().mean()) >= 0.9, errors


def test_gd_enhancement_lowers_the_cost(known_map: dict) -> None:
    problem = known_map["problem"]
    found, _ = search_poses(problem, width=4, final_level=3, initial=known_map["initial"])
    before = problem.cost(found[:, None])[:, 0]
    for optimizer, lr in (("sgd", 0.05), ("adam", 0.01)):
        refined = refine_poses(problem.cost, found, steps=20, learning_rate=lr, optimizer=optimizer)
        after = problem.cost(refined[:, None])[:, 0]
        assert float(after.mean()) < 0.9 * float(before.mean()), (optimizer, before.mean(), after.mean())
    assert geodesic_distance_deg(refined, known_map["truth"]).median() < geodesic_distance_deg(found, known_map["truth"]).median()


def test_schedule_pretrains_the_denoiser_then_two_stages() -> None:
    method = Cryo2SSNet()
    config = Cryo2SSNetConfig(denoiser_pretrain_steps=10, stage1_fraction=0.5, denoiser_active_fraction=0.5)
    manifest = _manifest(24, 8.0, 32 * 50, snr_linear=1.0)
    runner = RunnerConfig(epochs=2, batch_size=32)
    ctx = TrainContext(
        rank=0,
        world_size=1,
        device=torch.device("cpu"),
        dataset_dir=None,
        manifest=manifest,
        runner=runner,
        steps_per_epoch=steps_per_epoch(manifest.count, 1, runner),
    )
    state = method.setup(config, manifest, ctx)
    assert ctx.total_steps == 100
    phases = [method.schedule(config, True, step, ctx.total_steps) for step in range(100)]
    assert phases[:10] == [("denoiser", True)] * 10
    assert phases[10:32] == [("stage1", True)] * 22 and phases[33:55] == [("stage1", False)] * 22
    assert phases[55:] == [("stage2", False)] * 45
    # The runner steps the LR schedule once per step: the map's step size drops when stage 2 starts.
    scheduler, groups = state.schedulers["model"], state.optimizers["model"].param_groups
    decoder_lr = []
    for _ in range(100):
        decoder_lr.append(groups[1]["lr"])
        state.optimizers["model"].step()
        scheduler.step()
    assert decoder_lr[:55] == [config.decoder_lr] * 55
    assert decoder_lr[55:] == pytest.approx([config.decoder_lr * config.stage2_decoder_lr_factor] * 45)
    assert {group["lr"] for group in groups[:1]} == {config.encoder_lr}
    end_to_end = Cryo2SSNetConfig(use_search=False)
    assert "denoiser" not in method.setup(end_to_end, manifest, ctx).modules
    assert method.schedule(end_to_end, False, 0, ctx.total_steps) == ("stage2", False)


def test_real_data_without_an_snr_is_refused(tmp_path) -> None:
    manifest = _manifest(24, 8.0, 10, source="RELION import")
    with pytest.raises(CryorayInputError, match="snr_linear"):
        Cryo2SSNet().check_dataset(tmp_path, manifest, Cryo2SSNetConfig())


def test_a_few_hundred_steps_on_noiseless_images_improve_the_map() -> None:
    torch.manual_seed(0)
    box, voxel, count, steps, batch = 24, 4.0, 1024, 100, 16
    volume = builtin_phantom(box)
    stack = simulate_particle_stack(volume, voxel, count, ctf=True, seed=0)
    images, table = torch.from_numpy(stack.images), stack.particles
    ctf = {k: torch.tensor(table[k].to_numpy(), dtype=torch.float32) for k in CTF_PARAMETERS}
    method = Cryo2SSNet()
    config = Cryo2SSNetConfig(
        denoiser_pretrain_steps=0,
        use_denoiser=False,
        search_width=2,
        search_depth=3,
        gd_steps=2,
        stage1_fraction=0.8,
        global_search_level=1,
        soft_assignment_candidates=8,
    )
    manifest = _manifest(box, voxel, count)
    runner = RunnerConfig(epochs=steps * batch // count, batch_size=batch)
    ctx = TrainContext(
        rank=0,
        world_size=1,
        device=torch.device("cpu"),
        dataset_dir=None,
        manifest=manifest,
        runner=runner,
        steps_per_epoch=steps_per_epoch(count, 1, runner),
    )
    state = method.setup(config, manifest, ctx)
    reference = volume

    def score() -> dict:
        return evaluate_reconstruction(state.unwrapped("decoder").density.detach(), reference, voxel, search_level=1).metrics

    before = score()
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        pick = torch.randint(0, count, (batch,), generator=g)
        losses.append(take_step(method, state, {"image": images[pick], **{k: v[pick] for k, v in ctf.items()}}, config, ctx))
    after = score()
    assert {"stage1", "stage2"} == {"stage1" if h["stage"] == 1.0 else "stage2" for h in losses}
    assert np.mean([h["data_unbiased_l2"] for h in losses[-20:]]) < 0.5 * np.mean([h["data_unbiased_l2"] for h in losses[:5]])
    assert after["map_correlation"] > before["map_correlation"] + 0.2, (before, after)
    assert after["fsc_resolution_0.5_angstrom"] < 0.8 * before["fsc_resolution_0.5_angstrom"], (before, after)
