"""RobPicker's networks, Dice loss and the finite-difference hypergradient against exact second-order autograd."""

from __future__ import annotations

import pytest
import torch
from cryoray.methods.robpicker.networks import (
    LabelCorrection,
    LossReweighting,
    dice_loss_per_patch,
    one_hot_labels,
    weighted_dice,
)
from cryoray.nn.bilevel import finite_difference_hypergradient
from cryoray.nn.unet3d import UNet3D
from torch.func import functional_call

NUM_CLASSES = 3


def test_unet_shapes_and_patch_size_check() -> None:
    net = UNet3D(NUM_CLASSES, channels=(4, 4, 8, 8), bottleneck_channels=8)
    logits, features = net(torch.randn(2, 1, 16, 16, 16))
    assert logits.shape == (2, NUM_CLASSES, 16, 16, 16)
    assert features.shape == (2, net.feature_channels, 16, 16, 16)
    with pytest.raises(ValueError, match="multiples of 16"):
        net(torch.randn(1, 1, 24, 16, 16))


def test_unet_has_the_papers_blocks() -> None:
    net = UNet3D(13, channels=(32, 48, 64, 64), bottleneck_channels=64)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d) and m.kernel_size == (3, 3, 3)]
    # 4 down-blocks × 4 convs + 2 bottleneck + 4 up-blocks × 2 convs
    assert len(convs) == 16 + 2 + 8
    assert sum(isinstance(m, torch.nn.BatchNorm3d) for m in net.modules()) == len(convs)
    assert sum(isinstance(m, torch.nn.ConvTranspose3d) for m in net.modules()) == 4
    assert net.head.kernel_size == (1, 1, 1) and net.head.out_channels == 13


def test_dice_loss_limits() -> None:
    labels = torch.randint(0, NUM_CLASSES, (2, 8, 8, 8))
    target = one_hot_labels(labels, NUM_CLASSES)
    assert torch.allclose(dice_loss_per_patch(target, target), torch.zeros(2), atol=1e-6)
    # everything predicted as a class the target lacks, and nothing where it has classes: Dice 0 for every class
    wrong = one_hot_labels(torch.zeros_like(labels), NUM_CLASSES)
    only_two = one_hot_labels(torch.full_like(labels, 2), NUM_CLASSES)
    assert torch.allclose(dice_loss_per_patch(wrong, only_two), torch.full((2,), 2 / 3), atol=1e-5)
    # a class absent from both prediction and target is not penalised
    half = one_hot_labels(torch.cat([torch.zeros(2, 4, 8, 8), torch.ones(2, 4, 8, 8)], 1).long(), NUM_CLASSES)
    assert torch.allclose(dice_loss_per_patch(half, half), torch.zeros(2), atol=1e-6)


def test_label_correction_mixes_prediction_and_noisy_label() -> None:
    torch.manual_seed(0)
    corrector = LabelCorrection(feature_channels=6, num_classes=NUM_CLASSES)
    features = torch.randn(2, 6, 4, 4, 4)
    noisy = one_hot_labels(torch.randint(0, NUM_CLASSES, (2, 4, 4, 4)), NUM_CLASSES)
    corrected, alpha = corrector(features, noisy)
    assert corrected.shape == noisy.shape and alpha.shape == noisy.shape
    assert ((alpha > 0) & (alpha < 1)).all()
    s = torch.softmax(corrector.segment(features), dim=1)
    assert torch.allclose(corrected, alpha * s + (1 - alpha) * noisy)
    # α is per voxel and per class (the paper's C-channel α), so each entry lies between S and L
    assert (corrected >= torch.minimum(s, noisy) - 1e-6).all() and (corrected <= torch.maximum(s, noisy) + 1e-6).all()
    with torch.no_grad():  # α → 0 keeps the annotation, α → 1 trusts the network
        corrector.mix_out.bias.fill_(-50.0)
    assert torch.allclose(corrector(features, noisy)[0], noisy, atol=1e-6)
    with torch.no_grad():
        corrector.mix_out.bias.fill_(50.0)
    assert torch.allclose(corrector(features, noisy)[0], s, atol=1e-6)
    # the paper's shape: 1×1×1 convs C→... with 2C → C → C mixing layers
    assert corrector.mix_hidden.in_channels == 2 * NUM_CLASSES and corrector.mix_out.out_channels == NUM_CLASSES


def test_reweighting_mlp_is_the_papers_size_and_gives_weights_in_0_1() -> None:
    reweighter = LossReweighting(hidden=500)
    assert sum(p.numel() for p in reweighter.parameters()) == 1 + 500 + 500 * 1 + 500 + 1 - 1  # 1501 ≈ "1.5 thousand"
    weights = reweighter(torch.linspace(0, 1, 11))
    assert weights.shape == (11,) and ((weights > 0) & (weights < 1)).all()
    weights.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in reweighter.parameters())


def _tiny_problem(seed: int = 0):
    torch.manual_seed(seed)
    net = UNet3D(NUM_CLASSES, channels=(2, 3), bottleneck_channels=4).double()
    corrector = LabelCorrection(net.feature_channels, NUM_CLASSES).double()
    reweighter = LossReweighting(hidden=16).double()
    x = torch.randn(3, 1, 8, 8, 8, dtype=torch.float64)
    noisy = one_hot_labels(torch.randint(0, NUM_CLASSES, (3, 8, 8, 8)), NUM_CLASSES).double()
    meta_x = torch.randn(2, 1, 8, 8, 8, dtype=torch.float64)
    meta_target = one_hot_labels(torch.randint(0, NUM_CLASSES, (2, 8, 8, 8)), NUM_CLASSES).double()
    buffers = {n: b.clone() for n, b in net.named_buffers()}

    with torch.no_grad():  # the stop-gradient inputs, at the current weights
        logits, features = functional_call(net, {**dict(net.named_parameters()), **buffers}, (x,))
        losses = dice_loss_per_patch(torch.softmax(logits, dim=1), corrector(features, noisy)[0])

    def lower(params):
        logits, _ = functional_call(net, {**params, **buffers}, (x,))
        return weighted_dice(logits, noisy, corrector, reweighter, features, losses)[0]

    def upper(params):
        logits, _ = functional_call(net, {**params, **buffers}, (meta_x,))
        return dice_loss_per_patch(torch.softmax(logits, dim=1), meta_target).mean()

    meta_params = [*corrector.parameters(), *reweighter.parameters()]
    return net, lower, upper, meta_params


def _exact_hypergradient(net, lower, upper, meta_params, inner_lr):
    params = {n: p.detach().clone().requires_grad_() for n, p in net.named_parameters()}
    grads = torch.autograd.grad(lower(params), list(params.values()), create_graph=True)
    unrolled = {n: p - inner_lr * g for (n, p), g in zip(params.items(), grads)}
    exact = torch.autograd.grad(upper(unrolled), meta_params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(meta_params, exact)]


@pytest.mark.parametrize("inner_lr", [1e-3, 0.1])
def test_finite_difference_hypergradient_matches_exact_second_order(inner_lr: float) -> None:
    net, lower, upper, meta_params = _tiny_problem()
    exact = _exact_hypergradient(net, lower, upper, meta_params, inner_lr)
    params = dict(net.named_parameters())
    approx = finite_difference_hypergradient(lower, upper, params, meta_params, inner_lr, epsilon=1e-6).grads
    flat_exact, flat_approx = torch.cat([g.reshape(-1) for g in exact]), torch.cat([g.reshape(-1) for g in approx])
    assert flat_exact.abs().max() > 0  # the meta parameters do influence the validation loss
    assert torch.allclose(flat_approx, flat_exact, rtol=1e-4, atol=1e-7 * flat_exact.abs().max().item())
    # at the default perturbation (norm 0.01) the estimate still points the same way
    default = finite_difference_hypergradient(lower, upper, params, meta_params, inner_lr, epsilon=0.01).grads
    flat_default = torch.cat([g.reshape(-1) for g in default])
    assert torch.nn.functional.cosine_similarity(flat_default, flat_exact, dim=0) > 0.99
    # the weights themselves are untouched and no .grad is left behind
    assert all(p.grad is None for p in [*net.parameters(), *meta_params])


def test_hypergradient_scales_with_inner_lr_and_vanishes_without_coupling() -> None:
    net, lower, upper, meta_params = _tiny_problem(seed=1)
    params = dict(net.named_parameters())
    # for small η the unrolled point barely moves, so the hypergradient is η·(a fixed vector)  (eq. 10)
    small = finite_difference_hypergradient(lower, upper, params, meta_params, 1e-6, epsilon=1e-6).grads
    large = finite_difference_hypergradient(lower, upper, params, meta_params, 1e-5, epsilon=1e-6).grads
    for a, b in zip(small, large):
        assert torch.allclose(b, 10 * a, rtol=1e-3, atol=1e-16)
    unrelated = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    zero = finite_difference_hypergradient(lower, upper, params, [unrelated], 1e-3, epsilon=1e-6).grads
    assert torch.equal(zero[0], torch.zeros(3, dtype=torch.float64))


def test_test_time_flips_average_the_four_rotated_predictions() -> None:
    """``test_time_flips``: the class probabilities of a tile are the mean of the net's probabilities for the tile
    turned by each of the training augmentation's 180° rotations, turned back."""
    from dataclasses import replace

    from cryoray.data.patches import WEDGE_PRESERVING_FLIPS
    from cryoray.methods.robpicker.inference import PickingSettings, segment_tomogram

    torch.manual_seed(0)
    net = UNet3D(NUM_CLASSES, [4, 8], 8).eval()
    tomogram = torch.randn(16, 16, 16).numpy()
    plain = PickingSettings(16, 0, 1, 1.0, 5, 1, 4.0)
    cpu = torch.device("cpu")
    averaged = segment_tomogram(net, tomogram, replace(plain, test_time_flips=True), cpu)
    turned = [
        segment_tomogram(
            net, tomogram.copy()[tuple(slice(None, None, -1) if a in axes else slice(None) for a in range(3))], plain, cpu
        )
        for axes in WEDGE_PRESERVING_FLIPS
    ]
    expected = torch.stack([p.flip([a + 1 for a in axes]) for p, axes in zip(turned, WEDGE_PRESERVING_FLIPS)]).mean(0)
    torch.testing.assert_close(averaged, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(averaged, turned[0], atol=1e-3)  # the net is not rotation-invariant: averaging changed it
