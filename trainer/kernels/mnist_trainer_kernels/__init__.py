"""The trainer's LeNet training step as compiled CPU kernels (lenet_step.cpp).

torch is imported first: the extension links against its shared libraries, which the
loader finds only once torch has loaded them.
"""

import torch  # noqa: F401  # loads libc10 and libtorch for the extension below

from mnist_trainer_kernels._lenet import (
    adam_step,
    forward_backward,
    instructions,
    sgd_step,
)

__all__ = ["adam_step", "forward_backward", "instructions", "sgd_step"]
