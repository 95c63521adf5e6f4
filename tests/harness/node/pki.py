"""Keys, certificates and kubeconfigs of one node run, made fresh by every `up`.

The control-plane harness's certificate helpers, extended with what a node needs: an API server
certificate valid for the node address and the `kubernetes` Service (pods call it through its
ClusterIP), a kubelet serving certificate, and one client identity per component.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID
from launcher import (
    certificate,
    client_cert_credentials,
    kubeconfig_text,
    pem_key,
    write_service_account_key,
    x509_name,
)

from node.configs import CLUSTER_DOMAIN, NODE_NAME, Layout
from node.network import API_SERVICE_IP

# Component → (user, group) in its client certificate.
CLIENTS: dict[str, tuple[str, str | None]] = {
    "admin": ("admin", "system:masters"),
    "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", "system:masters"),
    "controller-manager": ("system:kube-controller-manager", None),
    "scheduler": ("system:kube-scheduler", None),
    "kubelet": (f"system:node:{NODE_NAME}", "system:nodes"),
    "kube-proxy": ("system:kube-proxy", None),
}


def _sans(dns: list[str], ips: list[str]) -> list[x509.GeneralName]:
    return [x509.DNSName(name) for name in dns] + [
        x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips
    ]


def write_node_pki(layout: Layout, node_ip: str, server: str) -> None:
    """Write the CA, serving and client certificates, the SA key and every kubeconfig."""
    pki = layout.pki
    pki.mkdir(parents=True, exist_ok=True)

    def write(stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        (pki / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (pki / f"{stem}.key").write_bytes(pem_key(key))
        (pki / f"{stem}.key").chmod(0o600)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509_name("mnist-tuning-node-ca", "mnist-tuning")
    write("ca", certificate(ca_name, ca_key, None, ca=True), ca_key)
    ca = (ca_name, ca_key)

    service = ["kubernetes", "kubernetes.default", "kubernetes.default.svc"]
    servers = {
        "apiserver": (
            "kube-apiserver",
            [*service, f"kubernetes.default.svc.{CLUSTER_DOMAIN}", "localhost"],
            ["127.0.0.1", node_ip, API_SERVICE_IP],
        ),
        "kubelet-serving": (NODE_NAME, [NODE_NAME, "localhost"], [node_ip, "127.0.0.1"]),
    }
    for stem, (common_name, dns, ips) in servers.items():
        key = ec.generate_private_key(ec.SECP256R1())
        cert = certificate(
            x509_name(common_name),
            key,
            ca,
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            sans=_sans(dns, ips),
        )
        write(stem, cert, key)
    for stem, (user, group) in CLIENTS.items():
        key = ec.generate_private_key(ec.SECP256R1())
        cert = certificate(x509_name(user, group), key, ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
        write(stem, cert, key)
        path = layout.kubeconfig if stem == "admin" else layout.kubeconfig_of(stem)
        credentials = client_cert_credentials(pki / f"{stem}.crt", pki / f"{stem}.key")
        path.write_text(kubeconfig_text(server, pki / "ca.crt", stem, credentials))
        path.chmod(0o600)
    write_service_account_key(pki)


def tls_secret_material(
    layout: Layout, stem: str, dns: list[str], ips: list[str] | None = None
) -> tuple[Path, Path]:
    """A serving certificate (an in-cluster Service's, e.g. a webhook's, or a loopback
    server's), signed by the node CA."""
    ca_cert = x509.load_pem_x509_certificate((layout.pki / "ca.crt").read_bytes())
    ca_key = load_pem_private_key((layout.pki / "ca.key").read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError("the node CA key is not an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = certificate(
        x509_name(dns[0]),
        key,
        (ca_cert.subject, ca_key),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        sans=_sans(dns, ips or []),
    )
    crt_path, key_path = layout.pki / f"{stem}.crt", layout.pki / f"{stem}.key"
    crt_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(pem_key(key))
    key_path.chmod(0o600)
    return crt_path, key_path
