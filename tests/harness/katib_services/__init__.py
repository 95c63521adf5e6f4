"""Stand-ins for Katib v0.19.0's Python suggestion services, served to a real Katib controller.

Katib's standalone install gives `random` and `tpe` to its hyperopt service, `grid` and
`multivariate-tpe` to its optuna service and `bayesianoptimization` to its skopt service:
Python programs our node cannot build from the Go module proxy. This package serves the same
gRPC API (`Suggestion` from Katib's own `api.proto`, with the standard gRPC health service the
controller's probes call) with the same libraries, reading an Experiment the way Katib's
services do (`space`, `hyperopt_search`, `optuna_search`, `skopt_search`): each parameter's
type, range, step and distribution (`logUniform` is drawn log-uniformly, which the goptuna
service ignores), each algorithm's settings, seeds and batches, and every succeeded or
early-stopped trial's objective. It is our own code, written from Katib's behaviour.

It also serves Katib's `EarlyStopping` API for `medianstop` (`median_stop`, `cluster`).

What it does not reproduce: Katib's exact random streams (the libraries here are newer than
the ones Katib pins, and draw other values from the same seed) and resuming from a volume.

Entry point: `python -m katib_services suggestion|earlystopping [--port N]`, in the images
`node.katib.services_archives()` builds.
"""
