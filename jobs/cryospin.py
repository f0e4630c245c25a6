"""cryoSPIN: ab-initio reconstruction by semi-amortized pose inference (multi-head encoder, then per-image
pose auto-decoding), with the per-image pose table sharded over the Ray Train workers.

Example usage:
    python jobs/cryospin.py                        # built-in 32 px phantom (particles-phantom-32), 2 CPU workers
    python jobs/cryospin.py --smoke
    python jobs/cryospin.py --dataset particles-hsp90 --config jobs/configs/cryospin-paper.yaml --num-workers 4 --use-gpu
    python jobs/cryospin.py --config jobs/configs/cryospin-fully-amortized.yaml      # the paper's baseline
    ray job submit --working-dir . -- python jobs/cryospin.py --tracking-uri http://HEAD:5000
"""

import sys

from cryoray.commands import main

if __name__ == "__main__":
    sys.exit(main("cryospin"))
