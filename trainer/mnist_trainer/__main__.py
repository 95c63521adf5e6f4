"""Run one trial: `python -m mnist_trainer --learning-rate=0.05 ...`."""

import sys

from mnist_trainer import host

host.configure()  # before torch loads: OpenMP reads its settings at load time

from mnist_trainer.cli import main  # noqa: E402  # deliberately after host.configure()

sys.exit(main())
