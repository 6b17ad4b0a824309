"""The dev cluster's PKI: one CA, serving and client certificates, service-account keys, kubeconfigs."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
from pathlib import Path


FRONT_PROXY_CN = "front-proxy-client"


def write_pki(pki: Path, host_ip: str | None = None, clients: tuple[tuple[str, str, str | None], ...] = ()) -> None:
    """CA, API server serving cert (for host_ip too, which real nodes and pods reach it by), admin and service-account
    keys, and a client cert per (file base, CN, O) in clients, e.g. ("node-real-0", "system:node:real-0", "system:nodes")."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    pki.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    later = now + dt.timedelta(days=365)

    def key_pem(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    def name(cn: str, org: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("r1-dev-ca"))
        .issuer_name(name("r1-dev-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(later)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, org: str | None, server: bool) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        b = (
            x509.CertificateBuilder()
            .subject_name(name(cn, org))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(later)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server:
            b = b.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.DNSName("kubernetes"),
                        x509.DNSName("kubernetes.default"),
                        x509.DNSName("kubernetes.default.svc"),
                        x509.DNSName("kubernetes.default.svc.cluster.local"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                        x509.IPAddress(ipaddress.ip_address("10.96.0.1")),
                        *([x509.IPAddress(ipaddress.ip_address(host_ip))] if host_ip else []),
                    ]
                ),
                critical=False,
            ).add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        else:
            b = b.add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        cert = b.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), key_pem(key)

    (pki / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (pki / "ca.key").write_bytes(key_pem(ca_key))
    for base, cn, org, server in (
        ("apiserver", "kube-apiserver", None, True),
        ("admin", "r1-dev-admin", "system:masters", False),
        # what the API server presents to aggregated API servers (KEDA's metrics server) it proxies to
        ("front-proxy-client", FRONT_PROXY_CN, None, False),
        *((b, c, o, False) for b, c, o in clients),
    ):
        crt, key = leaf(cn, org, server)
        (pki / f"{base}.crt").write_bytes(crt)
        (pki / f"{base}.key").write_bytes(key)
    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (pki / "sa.key").write_bytes(key_pem(sa))
    (pki / "sa.pub").write_bytes(
        sa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for p in pki.iterdir():
        if p.suffix == ".key":
            p.chmod(0o600)


def kubeconfig(server: str, pki: Path, user: str = "admin") -> str:
    import base64

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "r1-dev", "cluster": {"server": server, "certificate-authority-data": b64(pki / "ca.crt")}}],
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate-data": b64(pki / f"{user}.crt"),
                        "client-key-data": b64(pki / f"{user}.key"),
                    },
                }
            ],
            "contexts": [{"name": "r1-dev", "context": {"cluster": "r1-dev", "user": user}}],
            "current-context": "r1-dev",
        },
        indent=2,
    )

def admin_ssl_context(pki: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    return ctx


def issue(pki: Path, out: Path, cn: str, dns: tuple[str, ...] = (), ips: tuple[str, ...] = ()) -> None:
    """A certificate from the dev CA for a component that serves and is a client too (mutual TLS), written as
    out/ca.crt, out/tls.crt and out/tls.key, the layout KEDA's components read."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([*(x509.DNSName(d) for d in dns),
                                                    *(x509.IPAddress(ipaddress.ip_address(i)) for i in ips)]),
                       critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "ca.crt").write_bytes((pki / "ca.crt").read_bytes())
    (out / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    (out / "tls.key").chmod(0o600)
