"""(α,β)-GAN robust denoiser of particle images: train on clean/noisy pairs, score held-out images, denoise stacks.

Example usage:
    python jobs/betagan.py                          # built-in phantom pairs (particles-betagan-phantom), 2 CPU workers
    python jobs/betagan.py --smoke
    python jobs/betagan.py --dataset particles-betagan-4ake-snr0.1 --config jobs/configs/betagan-paper.yaml --use-gpu
    python jobs/betagan.py --config jobs/configs/betagan-contaminated.yaml   # Huber ε = 0.1 outliers
    ray job submit --working-dir . -- python jobs/betagan.py --tracking-uri http://HEAD:5000
    python jobs/betagan.py denoise --model outputs/betagan-.../model.safetensors --stack my.mrcs --star my.star --output-dir out/
"""

import sys

from cryoray.commands import main

if __name__ == "__main__":
    sys.exit(main("betagan"))
