"""mnist-tuning: tune a PyTorch MNIST model's hyperparameters with Katib, or on one machine."""

__version__ = "0.1.0"
