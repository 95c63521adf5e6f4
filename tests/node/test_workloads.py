"""Pods, Services, DNS, sidecar Jobs and webhooks on the real node: what Katib relies on."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.request
import uuid

from node.network import DNS_SERVICE_IP, resolve
from node.node import RunningNode
from node.pki import tls_secret_material
from workloads import container, pod, served, wait_for, wait_pod_phase


def test_a_pod_of_a_locally_built_image_runs_and_its_logs_come_back(
    node: RunningNode, node_namespace: str
) -> None:
    token = uuid.uuid4().hex
    script = f"import platform; print('{token}', platform.python_version())"
    node.apply([pod("hello", node_namespace, container("hello", script))])

    assert wait_pod_phase(node, node_namespace, "hello", {"Succeeded", "Failed"}) == "Succeeded"
    logs = node.kubectl("logs", "hello", "-n", node_namespace).stdout.split()
    assert logs[0] == token
    assert logs[1].startswith("3.11.")


def test_a_service_is_reached_by_name_from_another_pod_through_kube_proxy(
    node: RunningNode, node_namespace: str
) -> None:
    token = uuid.uuid4().hex
    serve = (
        "import http.server\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        f"        body = b'{token}'\n"
        "        self.send_response(200); self.end_headers(); self.wfile.write(body)\n"
        "http.server.HTTPServer(('', 8080), H).serve_forever()\n"
    )
    web = container(
        "web",
        serve,
        ports=[{"containerPort": 8080}],
        readinessProbe={"tcpSocket": {"port": 8080}, "periodSeconds": 1},
    )
    node.apply(served("web", node_namespace, web, 80, 8080))
    node.kubectl("wait", "--for=condition=Ready", "pod/web", "-n", node_namespace, "--timeout=120s")
    host_name = f"web.{node_namespace}.svc.cluster.local"
    cluster_ip = node.kubectl(
        "get", "service", "web", "-n", node_namespace, "-o", "jsonpath={.spec.clusterIP}"
    ).stdout
    # CoreDNS knows the name and kube-proxy has programmed the ClusterIP once the host gets the
    # page through it: the client pod then takes the same two steps.
    wait_for(f"{host_name} in CoreDNS", lambda: resolve(DNS_SERVICE_IP, host_name) == [cluster_ip])
    wait_for("kube-proxy's rules for the ClusterIP", lambda: _get(f"http://{cluster_ip}/") == token)

    fetch = (
        "import socket, urllib.request\n"
        f"print(socket.gethostbyname('{host_name}'))\n"
        f"print(urllib.request.urlopen('http://{host_name}/', timeout=10).read().decode())\n"
    )
    node.apply([pod("client", node_namespace, container("client", fetch))])

    assert wait_pod_phase(node, node_namespace, "client", {"Succeeded", "Failed"}) == "Succeeded"
    assert node.kubectl("logs", "client", "-n", node_namespace).stdout.split() == [
        cluster_ip,
        token,
    ]


def _get(url: str, context: ssl.SSLContext | None = None) -> str:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return str(response.read().decode())
    except OSError:
        return ""


# The trainer writes its metrics file and exits; the collector, in the same pod with a shared
# process namespace, finds the trainer's process, waits for it to end, then reads the file. The
# trainer holds its file until the collector has seen it, so neither can miss the other.
TRAINER = (
    "import os, time\n"
    "while not os.path.exists('/shared/collector-watching'): time.sleep(0.1)\n"
    "open('/shared/metrics.json', 'w').write('{\"accuracy\": \"0.93\"}')\n"
    "print('trainer done')\n"
)
# The collector's own command line must not contain what it looks for: it splits the needle.
COLLECTOR = (
    "import os, time\n"
    "NEEDLE = b'trainer ' + b'done'\n"
    "def trainer():\n"
    "    for pid in filter(str.isdigit, os.listdir('/proc')):\n"
    "        try: args = open(f'/proc/{pid}/cmdline', 'rb').read()\n"
    "        except OSError: continue\n"
    "        if NEEDLE in args: return pid\n"
    "while (pid := trainer()) is None: time.sleep(0.1)\n"
    "open('/shared/collector-watching', 'w').close()\n"
    "while os.path.exists(f'/proc/{pid}'): time.sleep(0.1)\n"
    "print('trainer', pid, 'exited; metrics:', open('/shared/metrics.json').read())\n"
)


def test_a_sidecar_waits_for_the_trainer_process_then_reads_its_file(
    node: RunningNode, node_namespace: str
) -> None:
    mount = [{"name": "shared", "mountPath": "/shared"}]
    template = pod(
        "trial",
        node_namespace,
        container("training", TRAINER, volumeMounts=mount),
        container("metrics-collector", COLLECTOR, volumeMounts=mount),
        shareProcessNamespace=True,
        volumes=[{"name": "shared", "emptyDir": {}}],
    )
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "trial", "namespace": node_namespace},
        "spec": {"backoffLimit": 0, "template": {"spec": template["spec"]}},
    }
    node.apply([job])

    node.kubectl(
        "wait", "--for=condition=Complete", "job/trial", "-n", node_namespace, "--timeout=120s"
    )
    collector = node.kubectl(
        "logs", "job/trial", "-c", "metrics-collector", "-n", node_namespace
    ).stdout
    assert "exited; metrics:" in collector
    assert json.loads(collector.split("metrics:", 1)[1]) == {"accuracy": "0.93"}
    assert (
        "trainer done"
        in node.kubectl("logs", "job/trial", "-c", "training", "-n", node_namespace).stdout
    )


WEBHOOK = (
    "import base64, http.server, json, ssl\n"
    "PATCH = base64.b64encode(json.dumps([{'op': 'add', 'path': '/metadata/labels/mutated-by',"
    " 'value': 'node-webhook'}]).encode()).decode()\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.end_headers(); self.wfile.write(b'ok')\n"
    "    def do_POST(self):\n"
    "        review = json.loads(self.rfile.read(int(self.headers['Content-Length'])))\n"
    "        review['response'] = {'uid': review['request']['uid'], 'allowed': True,"
    " 'patchType': 'JSONPatch', 'patch': PATCH}\n"
    "        body = json.dumps(review).encode()\n"
    "        self.send_response(200); self.send_header('Content-Type', 'application/json')\n"
    "        self.end_headers(); self.wfile.write(body)\n"
    "server = http.server.HTTPServer(('', 8443), H)\n"
    "tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n"
    "tls.load_cert_chain('/certs/tls.crt', '/certs/tls.key')\n"
    "server.socket = tls.wrap_socket(server.socket, server_side=True)\n"
    "server.serve_forever()\n"
)


def test_a_mutating_webhook_served_by_a_pod_is_called_by_the_api_server(
    node: RunningNode, node_namespace: str
) -> None:
    service = f"marker.{node_namespace}.svc"
    crt, key = tls_secret_material(node.layout, f"webhook-{node_namespace}", [service])
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": "marker-tls", "namespace": node_namespace},
        "data": {
            "tls.crt": base64.b64encode(crt.read_bytes()).decode(),
            "tls.key": base64.b64encode(key.read_bytes()).decode(),
        },
    }
    webhook = container(
        "webhook",
        WEBHOOK,
        ports=[{"containerPort": 8443}],
        volumeMounts=[{"name": "certs", "mountPath": "/certs", "readOnly": True}],
    )
    backend, service = served("marker", node_namespace, webhook, 443, 8443)
    backend["spec"]["volumes"] = [{"name": "certs", "secret": {"secretName": "marker-tls"}}]
    ca_bundle = base64.b64encode((node.layout.pki / "ca.crt").read_bytes()).decode()
    hook = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": f"marker-{node_namespace}"},
        "webhooks": [
            {
                "name": "marker.node.mnist.dev",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "timeoutSeconds": 5,
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": node_namespace}
                },
                "objectSelector": {"matchLabels": {"mark-me": "yes"}},
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["configmaps"],
                    }
                ],
                "clientConfig": {
                    "caBundle": ca_bundle,
                    "service": {"name": "marker", "namespace": node_namespace, "path": "/mutate"},
                },
            }
        ],
    }
    node.apply([secret, backend, service])
    node.kubectl(
        "wait", "--for=condition=Ready", "pod/marker", "-n", node_namespace, "--timeout=120s"
    )
    cluster_ip = node.kubectl(
        "get", "service", "marker", "-n", node_namespace, "-o", "jsonpath={.spec.clusterIP}"
    ).stdout
    # The API server runs on this host and calls the webhook through the Service's ClusterIP:
    # once the host gets an answer there, so will it.
    tls = ssl.create_default_context(cafile=str(node.layout.pki / "ca.crt"))
    tls.check_hostname = False
    wait_for(
        "the webhook through its ClusterIP", lambda: _get(f"https://{cluster_ip}/", tls) == "ok"
    )
    try:
        node.apply([hook])
        marked = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "marked",
                "namespace": node_namespace,
                "labels": {"mark-me": "yes"},
            },
        }
        plain = {**marked, "metadata": {"name": "plain", "namespace": node_namespace}}
        node.apply([marked, plain])
        labels = {
            name: json.loads(
                node.kubectl("get", "configmap", name, "-n", node_namespace, "-o", "json").stdout
            )["metadata"].get("labels", {})
            for name in ("marked", "plain")
        }
    finally:
        node.kubectl("delete", "mutatingwebhookconfiguration", f"marker-{node_namespace}")
    assert labels["marked"] == {"mark-me": "yes", "mutated-by": "node-webhook"}
    assert labels["plain"] == {}
