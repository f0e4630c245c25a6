"""(α,β)-GAN denoiser: a Table-2-like comparison (supplement) at SNR 0.1 and 0.05, Huber ε = 0.1 rows, clustering test.

One process, every denoiser on the same images. Data (simulated here, seeded): adenylate kinase chain A from
../shared/data/mdanalysis_workshop/4ake.pdb.gz (open form) and a closed-like second conformation made from it by
rotating the LID (residues 122–159) and NMP (30–59) domains towards the core about their hinge axes (Cα 121–160 and
29–60); no closed structure (1AKE) is in the shared data. Without the shared data the two conformations are the
built-in phantom and the phantom with one blob moved. Images: projections at uniform random poses, CTF as in the
recipes, Gaussian noise at the stack SNR, half of each conformation.

Rows per SNR: noisy input, skimage non-local means, BM3D (PyPI bm3d), ℓ2-AE, (1,1)-GAN+ℓ1, (1,−1)-GAN+ℓ1,
WGAN-GP+ℓ1 (all ResNet generators, λ = 10), and (1,−1)-GAN+ℓ1 with the plain deep-conv generator (note 4); at the
SNRs of ``--contamination-snr`` the ℓ2-AE, (1,1)-GAN+ℓ1 and WGAN-GP+ℓ1 again, trained with ε = 0.1 of the clean
images replaced by pure noise.
Every model trains in this process through the method's own ``setup``/``train_step`` (no Ray: the point is the
denoisers, not the platform) for the same number of steps. Metrics: MSE, PSNR, SSIM on per-image [0, 1]-scaled
test images (mean and sd); clustering accuracy (Isomap → 2D → k-means, k = 2) on 60 images (30 per conformation)
seen from one direction with ±15° jitter, as the supplement's 60-image test.

    python benchmarks/betagan_table2.py --out benchmarks/_work/betagan_table2            # sizes: see --help
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
import time
from pathlib import Path

import gemmi
import numpy as np
import pandas as pd
import torch
from cryoray.config import RunnerConfig
from cryoray.io.atomic import atomic_model_to_density
from cryoray.methods.betagan import BetaGAN, BetaGANConfig
from cryoray.methods.betagan.evaluation import (
    bm3d_denoise,
    clustering_accuracy,
    denoise_images,
    metrics_table,
    nlm_denoise,
    summarise,
    write_image_grid,
)
from cryoray.simulate.particles import simulate_particle_stack
from cryoray.simulate.phantom import builtin_phantom
from cryoray.train.context import TrainContext

REPO = Path(__file__).resolve().parents[1]
SHARED_MODEL = REPO.parent / "shared" / "data" / "mdanalysis_workshop" / "4ake.pdb.gz"
MODELS: dict[str, dict] = {
    "l2_ae": {"loss": "l2_ae"},
    "(1,1)-GAN+l1": {"loss": "alpha_beta", "alpha_beta": (1.0, 1.0)},
    "(1,-1)-GAN+l1": {"loss": "alpha_beta", "alpha_beta": (1.0, -1.0)},
    "WGAN-GP+l1": {"loss": "wgan_gp"},
    "(1,-1)-GAN+l1 plain": {"loss": "alpha_beta", "alpha_beta": (1.0, -1.0), "architecture": "plain"},
}
CONTAMINATED = ("l2_ae", "(1,1)-GAN+l1", "WGAN-GP+l1")
# (first hinge residue, last hinge residue, domain residues, rotation in degrees)
DOMAIN_MOVES = ((121, 160, range(122, 160), 45.0), (29, 60, range(30, 60), 30.0))


def _ca(chain: gemmi.Chain, number: int) -> np.ndarray:
    residue = next(r for r in chain if r.seqid.num == number)
    atom = residue["CA"][0].pos
    return np.array([atom.x, atom.y, atom.z])


def _rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = np.radians(degrees)
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def two_conformations(box_px: int, voxel_angstrom: float, workdir: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """(open, closed-like) density maps and a sentence saying where they come from."""
    if not SHARED_MODEL.is_file():
        phantom = builtin_phantom(box_px)
        moved = np.roll(phantom, box_px // 8, axis=2) * 0.3 + phantom * 0.7
        return phantom, moved, "built-in phantom vs phantom with shifted mass (shared 4ake.pdb.gz absent)"
    with gzip.open(SHARED_MODEL, "rt") as handle:
        structure = gemmi.read_pdb_string(handle.read())
    structure.setup_entities()
    structure.remove_ligands_and_waters()
    model = structure[0]
    for name in [chain.name for chain in model if chain.name != "A"]:
        model.remove_chain(name)
    opened = workdir / "4ake_A.pdb"
    structure.write_pdb(str(opened))
    chain = model["A"]
    core = np.array(
        [[a.pos.x, a.pos.y, a.pos.z] for r in chain if not (30 <= r.seqid.num < 60 or 122 <= r.seqid.num < 160) for a in r]
    )
    centre = core.mean(axis=0)
    for first, last, residues, degrees in DOMAIN_MOVES:
        origin, axis = _ca(chain, first), _ca(chain, last) - _ca(chain, first)
        atoms = [a for r in chain if r.seqid.num in residues for a in r]
        xyz = np.array([[a.pos.x, a.pos.y, a.pos.z] for a in atoms])
        candidates = [(xyz - origin) @ _rotation(axis, s * degrees).T + origin for s in (1, -1)]
        closer = min(candidates, key=lambda c: np.linalg.norm(c.mean(axis=0) - centre))
        for atom, position in zip(atoms, closer):
            atom.pos = gemmi.Position(*position)
    closed = workdir / "4ake_A_closed.pdb"
    structure.write_pdb(str(closed))
    maps = [atomic_model_to_density(p, voxel_angstrom, box_px=box_px) for p in (opened, closed)]
    return maps[0], maps[1], "4AKE chain A (open) vs LID 45° + NMP 30° closed towards the core (synthetic)"


def simulate_pairs(volumes, voxel, count_each, snr, seed, poses="uniform"):
    """Noisy/clean images of both conformations (count_each each) and their labels."""
    noisy, clean, labels = [], [], []
    for label, volume in enumerate(volumes):
        stack = simulate_particle_stack(volume, voxel, count_each, snr_linear=snr, ctf=True, poses=poses, seed=[seed, label])
        noisy.append(stack.images)
        clean.append(stack.clean_images)
        labels.append(np.full(count_each, label))
    return np.concatenate(noisy), np.concatenate(clean), np.concatenate(labels)


def jittered_view(count: int, seed: int) -> pd.DataFrame:
    """One projection direction with ±15° jitter of all three Euler angles (the aligned 60-image clustering set)."""
    rng = np.random.default_rng(seed)
    base = np.array([30.0, 70.0, 10.0])
    angles = base + rng.uniform(-15, 15, size=(count, 3))
    return pd.DataFrame(angles, columns=["rot_deg", "tilt_deg", "psi_deg"])


def train_model(settings: dict, noisy, clean, args, contamination: float) -> tuple[torch.nn.Module, float]:
    """Train one generator with the method's own step for args.steps steps; returns it and the seconds taken."""
    torch.manual_seed(args.seed)
    config = BetaGANConfig(**settings, channels=args.channels, contamination_fraction=contamination, generator_lr=args.lr)
    ctx = TrainContext(rank=0, world_size=1, device=torch.device("cpu"), dataset_dir=None, manifest=None, runner=RunnerConfig())
    method = BetaGAN()
    state = method.setup(config, None, ctx)
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    for _ in range(args.steps):
        rows = rng.choice(len(noisy), size=args.batch_size, replace=False)
        batch = {
            "image": torch.from_numpy(noisy[rows]),
            "clean_image": torch.from_numpy(clean[rows]),
            "particle_index": torch.from_numpy(rows),
        }
        for module in state.modules.values():
            module.train()
        method.train_step(state, batch, config, ctx)
    return state.unwrapped("generator"), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--box-px", type=int, default=32, help="image size (the supplement: 128)")
    parser.add_argument("--voxel-angstrom", type=float, default=3.0)
    parser.add_argument("--train-per-conformation", type=int, default=1500)
    parser.add_argument("--test-per-conformation", type=int, default=32)
    parser.add_argument("--steps", type=int, default=300, help="training steps per model")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam step of G")
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--snr", type=float, nargs="+", default=[0.1, 0.05])
    parser.add_argument("--contamination-snr", type=float, nargs="*", default=[0.1, 0.05], help="SNRs with ε rows")
    parser.add_argument("--skip-bm3d", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/_work/betagan_table2")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        volumes = two_conformations(args.box_px, args.voxel_angstrom, Path(tmp))
    source = volumes[2]
    rows, tables, clustering = [], [], []
    for snr in args.snr:
        train_noisy, train_clean, _ = simulate_pairs(volumes[:2], args.voxel_angstrom, args.train_per_conformation, snr, seed=1)
        test_noisy, test_clean, _ = simulate_pairs(volumes[:2], args.voxel_angstrom, args.test_per_conformation, snr, seed=2)
        view = jittered_view(30, seed=3)
        cluster_noisy, cluster_clean, cluster_labels = simulate_pairs(
            volumes[:2], args.voxel_angstrom, 30, snr, seed=3, poses=view
        )
        estimates = {"noisy": (test_noisy, cluster_noisy)}
        seconds = {}
        for name, denoiser in (("NLM", nlm_denoise), ("BM3D", None if args.skip_bm3d else bm3d_denoise)):
            if denoiser is not None:
                start = time.perf_counter()
                estimates[name] = (denoiser(test_noisy), denoiser(cluster_noisy))
                seconds[name] = time.perf_counter() - start
        runs = [(name, settings, 0.0) for name, settings in MODELS.items()]
        if snr in args.contamination_snr:
            runs += [(f"{name} eps=0.1", MODELS[name], 0.1) for name in CONTAMINATED]
        for name, settings, contamination in runs:
            generator, seconds[name] = train_model(settings, train_noisy, train_clean, args, contamination)
            estimates[name] = (denoise_images(generator, test_noisy), denoise_images(generator, cluster_noisy))
            print(f"SNR {snr} {name}: {seconds[name]:.0f} s", flush=True)
        table = metrics_table(test_clean, {k: v[0] for k, v in estimates.items()}, np.arange(len(test_clean)))
        tables.append(table.assign(snr=snr))
        summary = summarise(table).assign(snr=snr)
        summary["train_or_run_s"] = summary["method"].map(seconds)
        summary["clustering_accuracy"] = summary["method"].map(
            {k: clustering_accuracy(v[1], cluster_labels) for k, v in estimates.items()}
        )
        clustering.append({"snr": snr, "clean": clustering_accuracy(cluster_clean, cluster_labels)})
        rows.append(summary)
        grid_rows = {"clean": test_clean, **{k: v[0] for k, v in estimates.items()}}
        write_image_grid(args.out / f"grid_snr{snr}.png", grid_rows, columns=8)
        pd.concat(rows, ignore_index=True).to_csv(args.out / "table2.csv", index=False)  # kept as each SNR ends
    result = pd.concat(rows, ignore_index=True)
    result.to_csv(args.out / "table2.csv", index=False)
    pd.concat(tables, ignore_index=True).to_csv(args.out / "per_image.csv", index=False)
    sizes = {k: v for k, v in vars(args).items() if k != "out"}
    (args.out / "summary.json").write_text(
        json.dumps(
            {
                "sizes": sizes,
                "conformations": source,
                "clean_clustering": clustering,
                "wall_s": time.perf_counter() - started,
            },
            indent=2,
        )
    )
    pd.set_option("display.width", 200)
    print(f"conformations: {source}; clean-image clustering: {clustering}")
    print(result.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"wall {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
