"""cryoSPIN pieces without Ray: winner-takes-all, the axis-angle pose update, auto-decoding of known-map poses,
and the per-worker row partition and pose table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from cryoray.config import RunnerConfig
from cryoray.data.pose_table import (
    PoseTable,
    iter_owned_batches,
    owned_chunks,
    owned_row_range,
    read_particle_indices,
)
from cryoray.data.recipes import resolve_dataset
from cryoray.io.mrc import read_mrc
from cryoray.methods.cryospin import CryoSPIN, CryoSpinConfig
from cryoray.methods.cryospin.networks import HartleyVolume, render_fourier
from cryoray.physics import (
    axis_angle_to_matrix,
    euler_relion_to_matrix,
    fft3_centered,
    geodesic_distance_deg,
    ht3_centered,
    radial_frequency_grid,
    random_rotations,
    slice_volume_fourier,
)
from cryoray.train.context import TrainContext
from cryoray.train.loop import steps_per_epoch, take_step


@pytest.fixture(scope="module")
def smoke():
    return resolve_dataset("particles-smoke")


def _setup(smoke, batch_size: int = 16, epochs: int = 1, **overrides):
    dataset_dir, manifest = smoke
    config = CryoSpinConfig(**{**CryoSPIN.smoke_preset["method"], **overrides})
    runner = RunnerConfig(epochs=epochs, batch_size=batch_size)
    ctx = TrainContext(
        rank=0,
        world_size=1,
        device=torch.device("cpu"),
        dataset_dir=dataset_dir,
        manifest=manifest,
        runner=runner,
        steps_per_epoch=steps_per_epoch(manifest.count, 1, runner),
    )
    method = CryoSPIN()
    torch.manual_seed(0)
    state = method.setup(config, manifest, ctx)
    return method, state, config, ctx


def test_winner_takes_all_uses_the_lowest_head_loss_and_only_winners_learn(smoke):
    method, state, config, ctx = _setup(smoke, batch_size=3, n_heads=6, pose_proposals="heads")
    batch = next(iter(method.train_batches(state, config, ctx)))
    encoder, decoder = state.modules["encoder"], state.modules["decoder"]
    with torch.no_grad():
        rotations, _ = encoder(batch["image"])
        ctf, observed = method._forward_terms(batch, config, ctx)
        per_head = torch.stack(
            [
                ((render_fourier(decoder(rotations[:, j]), ctf, None) - observed)[..., state.runtime.mask].abs() ** 2).mean(-1)
                / 2
                for j in range(config.n_heads)
            ],
            dim=1,
        )
    winners = set(per_head.argmin(1).tolist())
    loss = method.train_step(state, batch, config, ctx)["loss"]
    assert loss == pytest.approx(per_head.min(1).values.mean().item(), rel=1e-4)
    for j, head in enumerate(encoder.heads):
        grad = torch.cat([p.grad.flatten() for p in head.parameters()])
        if j in winners:
            assert grad.abs().max() > 0, f"winning head {j} got no gradient"
        else:
            assert torch.equal(grad, torch.zeros_like(grad)), f"head {j} won no image but got a gradient"
    assert len(winners) < config.n_heads  # 3 images, 6 heads: some heads must have lost
    assert state.runtime.head_wins.sum() == 3


def test_axis_angle_update_is_finite_at_zero_and_composes_on_the_left():
    table = PoseTable(np.array([5, 2, 9]))
    base = random_rotations(3, generator=torch.Generator().manual_seed(1))
    table.set_poses(table.rows(torch.tensor([2, 5, 9])), base)
    rows = table.rows(torch.tensor([9, 2]))
    omega = torch.zeros(2, 3, requires_grad=True)
    rotations = table.rotations(rows, omega)
    torch.testing.assert_close(rotations, base[[2, 0]])
    (rotations * torch.randn(2, 3, 3)).sum().backward()
    assert torch.isfinite(omega.grad).all() and omega.grad.abs().sum() > 0
    assert torch.autograd.gradcheck(axis_angle_to_matrix, torch.zeros(1, 3, dtype=torch.float64, requires_grad=True))
    # R = Exp(ω)·R_base: a rotation by θ about z applied after the base pose; fold keeps the pose, zeroes ω.
    theta = 0.3
    table.omega[rows] = torch.tensor([[0.0, 0.0, theta], [0.0, 0.0, theta]])
    rz = torch.tensor([[math.cos(theta), -math.sin(theta), 0], [math.sin(theta), math.cos(theta), 0], [0, 0, 1.0]])
    expected = rz @ base[[2, 0]]
    torch.testing.assert_close(table.rotations(rows), expected, atol=1e-6, rtol=0)
    table.fold(rows)
    assert torch.count_nonzero(table.omega[rows]) == 0
    torch.testing.assert_close(table.rotations(rows), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(geodesic_distance_deg(table.rotations(rows), base[[2, 0]]), torch.full((2,), math.degrees(theta)))


def test_pose_adam_moves_only_the_batch_rows_with_their_own_step_counts():
    table = PoseTable(np.arange(6))
    table.set_poses(torch.arange(6), torch.eye(3).repeat(6, 1, 1))
    rows = torch.tensor([1, 4])
    for _ in range(3):
        table.adam_step(rows, torch.ones(2, 3), None, lr=0.1)
    table.adam_step(torch.tensor([1]), -torch.ones(1, 3), None, lr=0.1)
    assert torch.count_nonzero(table.omega[[0, 2, 3, 5]]) == 0
    assert table.adam_steps.tolist() == [0, 4, 0, 0, 3, 0]
    torch.testing.assert_close(table.omega[4], torch.full((3,), -0.3))  # bias-corrected Adam: lr per step
    with pytest.raises(KeyError, match="not in this worker's shard"):
        table.rows(torch.tensor([7]))


def test_auto_decoding_recovers_true_poses_of_a_known_map(smoke):
    method, state, config, ctx = _setup(smoke, batch_size=64, decoder_lr_after_switch=1e-9, pose_lr=0.02)
    dataset_dir, manifest = smoke
    # The known map, scaled by least squares to the images, is the decoder (a fixed volume: tiny step size).
    _known_map_decoder(method, state, config, ctx, dataset_dir, manifest)
    batch = next(iter(method.train_batches(state, config, ctx)))
    true_rotations = euler_relion_to_matrix(batch["rot_deg"], batch["tilt_deg"], batch["psi_deg"])
    state.optimizers["model"].param_groups[1]["lr"] = config.decoder_lr_after_switch
    state.extra["switched"] = True
    table = state.sharded["pose_table"]
    rows = table.rows(batch["particle_index"])
    generator = torch.Generator().manual_seed(3)
    axis = torch.nn.functional.normalize(torch.randn(len(rows), 3, generator=generator), dim=-1)
    found = {}
    # From the true poses the optimiser settles at the noisy images' likelihood optimum (≈3° off at 24 px,
    # SNR 1); from poses 10° off every true pose it must reach the same optimum.
    for name, start in (("truth", true_rotations), ("off", axis_angle_to_matrix(axis * math.radians(10.0)) @ true_rotations)):
        table.set_poses(rows, start)
        for _ in range(10):
            method.train_step(state, batch, config, ctx)
        found[name] = table.rotations(rows)
    assert geodesic_distance_deg(start, true_rotations).mean().item() == pytest.approx(10.0, abs=0.01)
    assert geodesic_distance_deg(found["truth"], true_rotations).mean() < 4.0
    assert geodesic_distance_deg(found["off"], true_rotations).mean() < 4.0
    assert geodesic_distance_deg(found["off"], found["truth"]).mean() < 1.0


def _known_map_decoder(method, state, config, ctx, dataset_dir, manifest) -> None:
    """The dataset's true map, scaled by least squares to one batch of images, as the (fixed) volume."""
    truth = torch.from_numpy(read_mrc(dataset_dir / manifest.ground_truth["map"]).data).float()
    hartley = ht3_centered(truth)
    batch = next(iter(method.train_batches(state, config, ctx)))
    ctf, observed = method._forward_terms(batch, config, ctx)
    true_rotations = euler_relion_to_matrix(batch["rot_deg"], batch["tilt_deg"], batch["psi_deg"])
    predicted = render_fourier(slice_volume_fourier(hartley, true_rotations), ctf, None)
    scale = (predicted.conj() * observed).real.sum() / (predicted.abs() ** 2).sum()
    decoder = state.unwrapped("decoder")
    with torch.no_grad():
        decoder.mantissa.copy_(scale * hartley)
        decoder.exponent.zero_()


def test_rows_are_partitioned_once_across_workers_with_equal_step_counts(smoke):
    dataset_dir, manifest = smoke
    owned = []
    for rank in range(3):
        chunks = owned_chunks(dataset_dir, manifest, rank, 3)
        lo, hi = owned_row_range(manifest.count, rank, 3)
        indices = read_particle_indices(chunks)
        assert len(indices) == hi - lo
        owned.append(indices)
        seen = [b["particle_index"] for b in iter_owned_batches(chunks, 100, torch.device("cpu"), seed=rank)]
        assert sorted(torch.cat(seen).tolist()) == sorted(indices.tolist())  # one epoch: every owned image once
        padded = list(iter_owned_batches(chunks, 100, torch.device("cpu"), num_batches=5, seed=rank))
        assert len(padded) == 5 and all(b["particle_index"].dtype == torch.int64 for b in padded)
    everything = np.concatenate(owned)
    assert sorted(everything.tolist()) == list(range(manifest.count))


def test_the_volume_step_size_drops_at_the_switch_epoch(smoke):
    """The runner steps the LR schedule once per step; the volume's group changes at the switch, the encoder's never."""
    dataset_dir, manifest = smoke
    config = CryoSpinConfig(**{**CryoSPIN.smoke_preset["method"], "switch_epoch": 3})
    ctx = TrainContext(
        rank=0,
        world_size=1,
        device=torch.device("cpu"),
        dataset_dir=dataset_dir,
        manifest=manifest,
        runner=RunnerConfig(epochs=5, batch_size=16),
        steps_per_epoch=4,
    )
    state = CryoSPIN().setup(config, manifest, ctx)
    optimizer, scheduler = state.optimizers["model"], state.schedulers["model"]
    lrs = []
    for _ in range(ctx.total_steps):
        lrs.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert {lr[0] for lr in lrs} == {config.encoder_lr}
    assert [lr[1] for lr in lrs[:12]] == [config.decoder_lr] * 12
    assert [lr[1] for lr in lrs[12:]] == pytest.approx([config.decoder_lr_after_switch] * 8)


def test_ab_initio_from_a_random_volume_places_the_images_and_leaves_nothing_beyond_nyquist(smoke):
    """The default method, in-process on the smoke set (1 024 images of 24 px at SNR 1): 5 epochs of 32 steps,
    auto-decoding from epoch 3. Measured: median pose error 4.0° (random: ~120°); the test allows 10°."""
    method, state, config, ctx = _setup(smoke, batch_size=32, epochs=5, switch_epoch=3)
    for epoch in range(ctx.runner.epochs):
        ctx.epoch = epoch
        method.begin_epoch(state, config, ctx)
        for batch in method.train_batches(state, config, ctx):
            take_step(method, state, batch, config, ctx)
        metrics = method.evaluate(state, config, ctx)
    assert metrics["auto_decoding"] == 1.0
    assert metrics["pose_error_median_deg"] < 10.0, metrics
    power = fft3_centered(state.unwrapped("decoder", HartleyVolume).density()).abs() ** 2
    beyond = radial_frequency_grid(ctx.manifest.box_px, 3) > 0.5
    assert float(power[beyond].sum()) < 1e-10 * float(power.sum())
