"""A real single-node Kubernetes here: kubelet, containerd, runc, CNI, kube-proxy, CoreDNS.

The one entry point is `python -m node up|down|status` (with tests/harness on the path), which
`make katib-cluster`, `make gitops-cluster` (`up --gitops`) and `make katib-cluster-down` call
and the node, e2e and gitops tiers' fixtures use.

- `node.node`: the lifecycle (up, down, what is running).
- `node.host`: Debian packages, sysctls, and every trace a node can leave (and removing them).
- `node.network`: the address plan and the firewall that keeps every packet on this machine.
- `node.configs`: containerd, kubelet, kube-proxy, CNI and CoreDNS settings, as pure functions.
- `node.images`: OCI images without a daemon or a registry, imported into containerd.
- `node.builds`: our two images from our Dockerfiles, built offline with buildah, cached as
  OCI archives by a hash of their inputs.
- `node.pki`: the run's certificates and kubeconfigs.
- `node.katib`, `node.product`: real Katib v0.19.0, and our CRD and operator, on the node.
- `node.gitops`: Argo CD and a Git server serving this checkout; Argo CD installs the rest.
- `node.registry`: a private registry on loopback (TLS, a login), as a user's registry is.
- `coredns/`, `pause/`: Go programs the node runs in pods, built by `build.sh node`;
  `distribution/`: a wrapper module pinning distribution's registry, built there too.
- `argocd/`, `kustomize/`, `gitserver/`: the gitops tier's programs, built by `build.sh gitops`:
  wrapper modules pinning Argo CD and kustomize, and our loopback Git server.
"""
