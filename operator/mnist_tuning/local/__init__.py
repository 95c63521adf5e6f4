"""The local tuning engine: `mnist-tuning run` runs a MnistTuning's trials on this machine."""
