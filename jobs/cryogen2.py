"""CryoGEN-II: restore the missing wedge of cryo-ET subtomograms with a UNet++ GAN and a wedge-aware masked loss.

Example usage:
    python jobs/cryogen2.py                        # built-in simulated tomograms (tomograms-cryogen2)
    python jobs/cryogen2.py --smoke
    python jobs/cryogen2.py --config jobs/configs/cryogen2-paper.yaml --dataset my-tomograms --num-workers 2 --use-gpu
    python jobs/cryogen2.py --config jobs/configs/cryogen2-masked-only.yaml   # the no-GAN (IsoNet/DeepDeWedge-style) ablation
    ray job submit --working-dir . -- python jobs/cryogen2.py --tracking-uri http://HEAD:5000
    python jobs/cryogen2.py apply --model outputs/cryogen2/model.safetensors --inputs tomo.mrc sub_001.mrc --output-dir restored/
"""

import sys

from cryoray.commands import main

if __name__ == "__main__":
    sys.exit(main("cryogen2"))
