"""Cryo2SSNet: ab-initio single-particle reconstruction (pose encoder + Hartley decoder + beam search on a Hopf grid).

Example usage:
    python jobs/cryo2ssnet.py                      # built-in phantom particles, 2 CPU workers
    python jobs/cryo2ssnet.py --smoke
    python jobs/cryo2ssnet.py --dataset particles-4ake --config jobs/configs/cryo2ssnet-paper.yaml --use-gpu
    ray job submit --working-dir . -- python jobs/cryo2ssnet.py --tracking-uri http://HEAD:5000
"""

import sys

from cryoray.commands import main

if __name__ == "__main__":
    sys.exit(main("cryo2ssnet"))
