"""The MNIST trial workload: trains a LeNet-style CNN and reports metrics Katib reads."""

__version__ = "0.1.0"
