"""The operator: kopf handlers that turn MnistTunings into Katib Experiments and mirror them back.

The handlers are thin: they parse the spec with the shared models, call the pure
`expand()`/`summarize()`, and do the Kubernetes I/O; the decisions live in pure
functions in `reconcile.py` and `conditions.py`.
"""
