"""Known-pose reconstruction of a density map from particle images (poses and CTF from the dataset).

Example usage:
    python jobs/reconstruct.py --smoke
    python jobs/reconstruct.py --dataset particles-4ake --num-workers 4 --use-gpu
    ray job submit --working-dir . -- python jobs/reconstruct.py --tracking-uri http://HEAD:5000
"""

import sys

from cryoray.commands import main

if __name__ == "__main__":
    sys.exit(main("reconstruct"))
