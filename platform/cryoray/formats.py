"""Names of the file conventions users choose on a command line, apart from ``cryoray.io`` (pandas, mrcfile) so
that the command lines' ``--help`` imports nothing heavy (``cryoray.commands``).

Picks STAR conventions. "relion5": RELION 5's tomogram particles, rlnTomoName and rlnCenteredCoordinate{X,Y,Z}Angst,
Ångström from the tomogram's centre (size/2 voxels, as RELION 5 and pytom-match-pick place it). "relion4": Warp
and RELION 4, rlnCoordinate{X,Y,Z} in the tomogram's voxels. Class, score and angles travel in both.
"""

from typing import Literal, get_args

PicksFormat = Literal["relion5", "relion4"]
PICKS_FORMATS: tuple[str, ...] = get_args(PicksFormat)
