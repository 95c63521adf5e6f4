"""Run one trial: `python -m mnist_trainer --learning-rate=0.05 ...`."""

import os
import sys

# Idle OpenMP threads spin only briefly before sleeping. When a trial shares its CPUs
# (parallel trials, a busy node) long spinning takes the time slices the working threads
# need; on two shared cores libgomp's default made an epoch about twice as slow as this,
# while never spinning (OMP_WAIT_POLICY=PASSIVE) made small batches on idle cores about
# twice as slow. Set before torch loads libgomp; the environment can still override it.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")

from mnist_trainer.cli import main  # imported after the OpenMP setting above

sys.exit(main())
