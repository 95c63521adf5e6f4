"""A real single-node Kubernetes here: kubelet, containerd, runc, CNI, kube-proxy, CoreDNS.

The one entry point is `python -m node up|down|status` (with tests/harness on the path), which
`make katib-cluster` and `make katib-cluster-down` call and the node test tier's fixtures use.

- `node.node`: the lifecycle (up, down, what is running).
- `node.host`: Debian packages, sysctls, and every trace a node can leave (and removing them).
- `node.network`: the address plan and the firewall that keeps every packet on this machine.
- `node.configs`: containerd, kubelet, kube-proxy, CNI and CoreDNS settings, as pure functions.
- `node.images`: OCI images without a daemon or a registry, imported into containerd.
- `node.builds`: our two images from our Dockerfiles, built offline with buildah, cached as
  OCI archives by a hash of their inputs.
- `node.pki`: the run's certificates and kubeconfigs.
- `coredns/`, `pause/`: Go programs the node runs in pods, built by `build.sh node`.
"""
