"""(α,β)-GAN denoiser: networks, contamination, metrics vs skimage, D/G steps on toy data, learning on tiny data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cryoray.config import RunnerConfig, deep_update, read_yaml_config, validate_job_config
from cryoray.data.recipes import resolve_dataset
from cryoray.errors import CryorayInputError
from cryoray.methods import METHODS
from cryoray.methods.betagan import BetaGAN, BetaGANConfig, contaminate, outlier_mask
from cryoray.methods.betagan.evaluation import (
    clustering_accuracy,
    denoise_images,
    image_metrics,
    read_split_images,
    unit_range,
)
from cryoray.methods.betagan.losses import scoring_rule
from cryoray.methods.betagan.networks import DenoisingAutoencoder, Discriminator
from cryoray.train.context import TrainContext
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

TINY = {"channels": [4, 8], "residual_blocks": 1, "discriminator_channels": [4, 8], "test_images": 32, "val_images": 16}


def _context(dataset_dir=None, manifest=None) -> TrainContext:
    return TrainContext(
        rank=0,
        world_size=1,
        device=torch.device("cpu"),
        dataset_dir=dataset_dir,
        manifest=manifest,
        runner=RunnerConfig(),
    )


@pytest.mark.parametrize("architecture", ["resnet", "plain"])
def test_generator_keeps_the_image_shape_and_discriminator_gives_one_logit(architecture):
    generator = DenoisingAutoencoder([4, 8, 16], residual_blocks=1, architecture=architecture)
    images = torch.randn(3, 32, 32)
    assert generator(images).shape == (3, 32, 32)
    assert Discriminator([4, 8]).forward(images).shape == (3,)
    has_skips = architecture == "resnet"
    assert generator.skips is has_skips
    assert all(block.residual is has_skips for block in generator.modules() if hasattr(block, "residual"))


def test_outlier_mask_selects_a_fixed_fraction_and_contamination_touches_only_those_rows():
    index = torch.arange(20000)
    mask = outlier_mask(index, 0.1, seed=3)
    assert mask.float().mean().item() == pytest.approx(0.1, abs=0.01)
    assert torch.equal(mask, outlier_mask(index, 0.1, seed=3))
    assert not torch.equal(mask, outlier_mask(index, 0.1, seed=4))
    assert not outlier_mask(index, 0.0, seed=3).any()
    clean = torch.randn(8, 16, 16)
    rows = torch.tensor([True, False, True, False, False, False, False, True])
    for kind in ("noise", "wrong_particle", "heavy_tailed"):
        out = contaminate(clean, rows, kind, torch.Generator().manual_seed(0))
        assert torch.equal(out[~rows], clean[~rows])
        assert not torch.allclose(out[rows], clean[rows])


def test_metrics_agree_with_skimage_on_unit_range_images():
    rng = np.random.default_rng(0)
    clean = rng.normal(size=(3, 32, 32)).cumsum(axis=-1)
    estimate = clean + rng.normal(scale=2.0, size=clean.shape)
    ours = image_metrics(estimate, clean)
    for i in range(3):
        x, ref = unit_range(estimate[i]).numpy(), unit_range(clean[i]).numpy()
        assert x.min() == 0 and x.max() == 1
        assert ours["psnr"][i] == pytest.approx(peak_signal_noise_ratio(ref, x, data_range=1.0), rel=1e-9)
        expected_ssim = structural_similarity(
            ref, x, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
        assert ours["ssim"][i] == pytest.approx(expected_ssim, rel=1e-6)
        assert ours["mse"][i] == pytest.approx(np.mean((x - ref) ** 2))


def _toy_images(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Real: a bright square with a little noise; fake candidates: pure noise."""
    real = 0.1 * torch.randn(n, 8, 8, generator=generator)
    real[:, 2:6, 2:6] += 1.0
    return real, torch.randn(n, 8, 8, generator=generator)


def _discriminator_score(discriminator, real, fake, alpha, beta) -> float:
    """−[mean S(D(x), 1) + mean S(D(G), 0)]: what D minimises, by quadrature."""
    with torch.no_grad():
        p_real, p_fake = torch.sigmoid(discriminator(real)), torch.sigmoid(discriminator(fake))
    return -float(
        np.mean([scoring_rule(t, 1, alpha, beta) for t in p_real.tolist()])
        + np.mean([scoring_rule(t, 0, alpha, beta) for t in p_fake.tolist()])
    )


@pytest.mark.parametrize("alpha_beta", [(0.5, 0.5), (-0.5, -0.5)])
def test_discriminator_then_generator_steps_lower_their_own_losses(alpha_beta):
    torch.manual_seed(0)
    config = BetaGANConfig(**TINY, alpha_beta=alpha_beta, discriminator_lr=2e-3, generator_lr=2e-3)
    method, ctx = BetaGAN(), _context()
    state = method.setup(config, None, ctx)
    real, noisy = _toy_images(16, torch.Generator().manual_seed(1))
    generator, discriminator = state.modules["generator"], state.modules["discriminator"]
    fake = generator(noisy).detach()
    before = _discriminator_score(discriminator, real, fake, *alpha_beta)
    for _ in range(15):
        method._discriminator_step(state, real, fake, config, ctx)
    after = _discriminator_score(discriminator, real, fake, *alpha_beta)
    assert after < before - 0.01, (before, after)

    def generator_score() -> float:  # mean S(D(G(y)), 0): what G minimises
        with torch.no_grad():
            p_fake = torch.sigmoid(discriminator(generator(noisy)))
        return float(np.mean([scoring_rule(t, 0, *alpha_beta) for t in p_fake.tolist()]))

    g_before = generator_score()
    for _ in range(15):
        ctx.step(
            state.optimizers["generator"],
            {"adversarial": method._generator_adversarial(discriminator(generator(noisy)), config)},
        )
    assert generator_score() < g_before - 0.01


@pytest.fixture(scope="module")
def smoke_pairs():
    dataset_dir, manifest = resolve_dataset("particles-betagan-smoke")
    return (
        dataset_dir,
        manifest,
        read_split_images(dataset_dir, manifest, 0, 448),
        read_split_images(dataset_dir, manifest, 480, 512),
    )


@pytest.mark.parametrize(
    "settings",
    [
        {"loss": "js"},
        {"loss": "wgan_gp", "contamination_fraction": 0.2, "contamination_kind": "wrong_particle"},
        {"loss": "l2_ae", "architecture": "plain"},
        {"loss": "l1_ae", "contamination_fraction": 0.2, "contamination_kind": "heavy_tailed"},
    ],
)
def test_every_loss_variant_takes_finite_steps(smoke_pairs, settings):
    dataset_dir, manifest, train, _ = smoke_pairs
    config = BetaGANConfig(**TINY, **settings)
    method, ctx = BetaGAN(), _context(dataset_dir, manifest)
    state = method.setup(config, manifest, ctx)
    assert ("discriminator" in state.modules) is config.adversarial
    batch = {
        "image": torch.tensor(train["image"][:16]),
        "clean_image": torch.tensor(train["clean_image"][:16]),
        "particle_index": torch.arange(16),
    }
    for _ in range(2):
        metrics = method.train_step(state, batch, config, ctx)
    assert all(np.isfinite(v) for v in metrics.values())


def test_a_short_training_run_raises_psnr_over_the_noisy_input(smoke_pairs):
    dataset_dir, manifest, train, test = smoke_pairs
    torch.manual_seed(0)
    config = BetaGANConfig(**TINY, generator_lr=2e-3)
    method, ctx = BetaGAN(), _context(dataset_dir, manifest)
    state = method.setup(config, manifest, ctx)
    untrained = image_metrics(denoise_images(state.unwrapped("generator"), test["image"]), test["clean_image"])
    order = torch.randperm(len(train["image"]), generator=torch.Generator().manual_seed(0))
    for step in range(25):
        rows = order[step * 16 : (step + 1) * 16].numpy()
        batch = {name: torch.as_tensor(train[name][rows]) for name in ("image", "clean_image", "particle_index")}
        state.modules["generator"].train()
        method.train_step(state, batch, config, ctx)
    noisy = image_metrics(test["image"], test["clean_image"])
    denoised = image_metrics(denoise_images(state.unwrapped("generator"), test["image"]), test["clean_image"])
    assert denoised["psnr"].mean() > noisy["psnr"].mean() + 5.0
    assert denoised["psnr"].mean() > untrained["psnr"].mean() + 3.0
    assert denoised["ssim"].mean() > noisy["ssim"].mean()


def test_clustering_separates_two_distinct_image_classes():
    rng = np.random.default_rng(0)
    a, b = np.zeros((20, 16, 16)), np.zeros((20, 16, 16))
    a[:, 4:12, 2:6] = 1.0
    b[:, 2:6, 4:12] = 1.0
    images = np.concatenate([a, b]) + 0.05 * rng.normal(size=(40, 16, 16))
    labels = np.repeat([0, 1], 20)
    assert clustering_accuracy(images, labels) == 1.0
    assert clustering_accuracy(images, 1 - labels) == 1.0


def test_training_refuses_unpaired_data_a_box_the_generator_cannot_halve_and_too_few_images(smoke_pairs):
    dataset_dir, manifest, _, _ = smoke_pairs
    unpaired = manifest.model_copy(update={"columns": {k: v for k, v in manifest.columns.items() if k != "clean_image"}})
    with pytest.raises(CryorayInputError, match="columns: expected a paired dataset with a 'clean_image' column"):
        BetaGAN().check_dataset(dataset_dir, unpaired, BetaGANConfig(**TINY))
    with pytest.raises(CryorayInputError, match="box_px: expected a multiple of 64 for 7 generator levels, got 32"):
        BetaGAN().check_dataset(dataset_dir, manifest, BetaGANConfig(**{**TINY, "channels": [4] * 7}))
    with pytest.raises(CryorayInputError, match="fewer than the dataset's 512 images"):
        BetaGAN().check_dataset(dataset_dir, manifest, BetaGANConfig(**{**TINY, "test_images": 500}))


@pytest.mark.parametrize("name", ["betagan-paper.yaml", "betagan-contaminated.yaml"])
def test_shipped_job_configs_validate(name):
    method = BetaGAN()
    path = Path(__file__).resolve().parents[1] / "jobs" / "configs" / name
    raw = deep_update({"dataset": METHODS["betagan"].default_dataset, "output_dir": "unused"}, read_yaml_config(path))
    validate_job_config(raw, method.config_schema, path)
