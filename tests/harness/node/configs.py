"""The node's configuration files and system manifests, as pure functions of its layout.

Every setting that mattered when a node first ran on these machines is here with its reason
(the measurements are in the project's reference notes on a real node): containerd's CRI plugin
with `restrict_oom_score_adj`, a kubelet that accepts cgroup v1 and never collects local images,
kube-proxy in iptables mode without conntrack sysctls, one bridge network without masquerading,
and CoreDNS serving `cluster.local` only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.host import CNI_NETWORK
from node.network import DNS_SERVICE_IP, NODE_POD_RANGE, POD_RANGE, NetworkPlan

NODE_NAME = "mnist-node"
CLUSTER_DOMAIN = "cluster.local"
API_PORT = 6443
KUBELET_HEALTHZ_PORT = 10248  # on 127.0.0.1: how a restarted kubelet shows it serves
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
COREDNS_IMAGE = "registry.k8s.io/coredns/coredns:v1.15.0"
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
# The discard port on loopback: nothing of the node listens there.
DEAD_REGISTRY = "http://127.0.0.1:9"
CNI_BIN_DIR = "/usr/lib/cni"


@dataclass(frozen=True)
class Layout:
    """Where one node keeps its state: everything below `root`, nothing elsewhere but /run."""

    root: Path

    @property
    def bin(self) -> Path:
        """The node's programs and kubectl."""
        return self.root / "bin"

    @property
    def etc(self) -> Path:
        """Rendered configuration files."""
        return self.root / "etc"

    @property
    def pki(self) -> Path:
        """Keys and certificates of this run."""
        return self.root / "pki"

    @property
    def logs(self) -> Path:
        """One log per process."""
        return self.root / "logs"

    @property
    def var(self) -> Path:
        """containerd's root, the kubelet's root, etcd's data, CNI's IP leases."""
        return self.root / "var"

    @property
    def pids(self) -> Path:
        """One pid file per process this node started."""
        return self.root / "pids"

    @property
    def registry_hosts(self) -> Path:
        """containerd's registry configuration: one folder per registry host, `_default` else."""
        return self.etc / "certs.d"

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (group system:masters)."""
        return self.root / "kubeconfig"

    def kubeconfig_of(self, component: str) -> Path:
        """The kubeconfig a component authenticates with."""
        return self.pki / f"{component}.kubeconfig"


def containerd_config(layout: Layout) -> str:
    """containerd 1.6 (config version 2) with the CRI plugin set up for this machine."""
    return f"""version = 2
root = "{layout.var / "containerd"}"
state = "/run/containerd"
[grpc]
  address = "{CONTAINERD_SOCKET}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{layout.var / "containerd-opt"}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  enable_unprivileged_ports = true
  enable_unprivileged_icmp = true
  # The VM's capability bounding set lacks CAP_SYS_RESOURCE: without this clamp the kernel
  # refuses the sandbox's oom_score_adj -998 and runc fails every pod ("can't get final
  # child's PID from pipe: EOF").
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{layout.etc / "cni"}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{layout.registry_hosts}"
"""


def default_registry_hosts() -> str:
    """containerd's hosts.toml for every registry without a folder of its own: a dead endpoint.

    Pods here run images imported into containerd; one that names any other image (Katib's
    suggestion images for the algorithms we build no image for, a user's typo) must fail on
    this machine, not ask DNS for the registry's name: the pull goes to a loopback port where
    nothing listens, and the kubelet reports `connection refused` at once. containerd 1.6
    refuses a hosts.toml without a `host` table ("invalid `host` tree") and then pulls from
    the registry's own host, so the dead endpoint is named twice.
    """
    return (
        f'server = "{DEAD_REGISTRY}"\n'
        f'[host."{DEAD_REGISTRY}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
    )


def cni_config(layout: Layout, plan: NetworkPlan) -> str:
    """One bridge network, host-local addresses, no masquerading (nothing may leave)."""
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": CNI_NETWORK,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": plan.bridge,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": NODE_POD_RANGE, "gateway": plan.gateway}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(layout.var / "cni-ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        },
        indent=2,
    )


def kubelet_config(layout: Layout, plan: NetworkPlan) -> dict[str, Any]:
    """KubeletConfiguration: cgroupfs on cgroup v1, local images kept, state under `layout`."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": plan.node_ip,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(layout.pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(layout.pki / "kubelet-serving.crt"),
        "tlsPrivateKeyFile": str(layout.pki / "kubelet-serving.key"),
        "cgroupDriver": "cgroupfs",
        # Kubernetes 1.35 refuses cgroup v1 unless told; 1.34 warns. Our machines are v1.
        "failCgroupV1": False,
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCKET}",
        "clusterDNS": [DNS_SERVICE_IP],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": "/etc/resolv.conf",
        "staticPodPath": str(layout.etc / "manifests"),
        "podLogsDir": str(layout.var / "log" / "pods"),
        "volumePluginDir": str(layout.var / "kubelet-plugins"),
        "podCIDR": NODE_POD_RANGE,
        "serializeImagePulls": False,
        # Images are imported, never pulled: collecting one would break every pod that uses it.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
        },
        "syncFrequency": "10s",
        "fileCheckFrequency": "5s",
        "nodeStatusReportFrequency": "10s",
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": KUBELET_HEALTHZ_PORT,
    }


def kube_proxy_config(layout: Layout) -> dict[str, Any]:
    """KubeProxyConfiguration: iptables mode; conntrack sysctls cannot be set in this VM."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clusterCIDR": POD_RANGE,
        "hostnameOverride": NODE_NAME,
        "bindAddress": "127.0.0.1",
        "metricsBindAddress": "127.0.0.1:10249",
        "healthzBindAddress": "127.0.0.1:10256",
        "clientConnection": {"kubeconfig": str(layout.kubeconfig_of("kube-proxy"))},
        "conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "iptables": {"syncPeriod": "10s", "minSyncPeriod": "0s"},
    }


COREFILE = f""".:53 {{
    errors
    health {{
       lameduck 2s
    }}
    ready
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }}
    cache 30
    loop
    reload
    loadbalance
}}
"""


# CoreDNS must answer while trainers fill both cores. A trial's pod is Burstable (Katib's
# metrics collector requests CPU); a BestEffort CoreDNS lost the CPU to it: its health answer
# took 1-3 s, the 1 s probes failed, the kubelet restarted it, and a trial's collector, unable
# to resolve Katib's DB manager, failed its trial. A CPU request makes it Burstable too, and
# its probes (5 s, as CoreDNS's own manifests set them) wait out a slow answer.
COREDNS_RESOURCES = {"requests": {"cpu": "100m", "memory": "70Mi"}, "limits": {"memory": "170Mi"}}
PATIENT_PROBE = {"timeoutSeconds": 5, "failureThreshold": 5}


def coredns_manifests() -> list[dict[str, Any]]:
    """CoreDNS as a Deployment behind Service `kube-dns` at the DNS address; no upstream."""
    labels = {"k8s-app": "kube-dns"}
    meta = {"name": "coredns", "namespace": "kube-system"}
    probe_port = {"ready": 8181, "health": 8080}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:coredns"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:coredns"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:coredns",
            },
            "subjects": [{"kind": "ServiceAccount", **meta}],
        },
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"Corefile": COREFILE}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {**meta, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": "coredns",
                        "priorityClassName": "system-cluster-critical",
                        "dnsPolicy": "Default",
                        "containers": [
                            {
                                "name": "coredns",
                                "image": COREDNS_IMAGE,
                                "imagePullPolicy": "Never",
                                "args": ["-conf", "/etc/coredns/Corefile"],
                                "ports": [
                                    {"containerPort": 53, "name": "dns", "protocol": "UDP"},
                                    {"containerPort": 53, "name": "dns-tcp", "protocol": "TCP"},
                                ],
                                "resources": COREDNS_RESOURCES,
                                "readinessProbe": {
                                    "httpGet": {"path": "/ready", "port": probe_port["ready"]},
                                    "periodSeconds": 1,
                                    **PATIENT_PROBE,
                                },
                                "livenessProbe": {
                                    "httpGet": {"path": "/health", "port": probe_port["health"]},
                                    "initialDelaySeconds": 10,
                                    **PATIENT_PROBE,
                                },
                                "volumeMounts": [
                                    {
                                        "name": "config",
                                        "mountPath": "/etc/coredns",
                                        "readOnly": True,
                                    }
                                ],
                            }
                        ],
                        "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": labels},
            "spec": {
                "clusterIP": DNS_SERVICE_IP,
                "selector": labels,
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                ],
            },
        },
    ]
