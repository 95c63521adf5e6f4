"""The pure core: the MnistTuning spec and status models, expand() and summarize().

Nothing here talks to a cluster or imports kopf, the Kubernetes client or torch
(an import-linter contract enforces it), so the operator, the local engine and the
CLI share one definition of what a tuning means.
"""
