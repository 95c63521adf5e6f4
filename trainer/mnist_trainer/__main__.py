"""Run one trial: `python -m mnist_trainer --learning-rate=0.05 ...`."""

import os
import sys

# Idle OpenMP threads sleep instead of spinning. When a trial shares its CPUs (parallel
# trials, a busy node) spinning threads take the time slices the working ones need; on
# two shared cores this made an epoch five to seven times slower. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from mnist_trainer.cli import main  # after the OpenMP setting above

sys.exit(main())
