"""RobPicker: train a cryo-ET particle picker by bi-level meta-learning, then pick and score held-out tomograms.

Example usage:
    python jobs/robpicker.py                       # built-in simulated tomograms, 2 CPU workers
    python jobs/robpicker.py --smoke
    python jobs/robpicker.py --dataset tomograms-shrec --config jobs/configs/robpicker-paper.yaml --num-workers 4 --use-gpu
    ray job submit --working-dir . -- python jobs/robpicker.py --tracking-uri http://HEAD:5000
    python jobs/robpicker.py predict --model outputs/robpicker/model.safetensors --tomograms my.mrc --output-dir picks/
"""

import sys

from cryoray.commands import main

if __name__ == "__main__":
    sys.exit(main("robpicker"))
