"""A throwaway PKI for the security tests: CAs, server and client certificates (EC P-256, quick
to generate), written as PEM files like a mounted Kubernetes TLS Secret."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


@dataclass
class Authority:
    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    cert_path: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return builder.not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(
        now + dt.timedelta(days=1)
    )


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def make_ca(directory: Path, name: str) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    cert = _validity(builder).sign(key, hashes.SHA256())
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}-ca.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Authority(name, key, cert, path)


def issue(
    ca: Authority, directory: Path, name: str, dns: list[str], ips: list[str], server: bool
) -> Issued:
    """A leaf certificate signed by ``ca``; ``server`` picks serverAuth or clientAuth usage."""
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = _validity(builder).sign(ca.key, hashes.SHA256())
    directory.mkdir(parents=True, exist_ok=True)
    issued = Issued(directory / f"{name}.crt", directory / f"{name}.key")
    issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, issued.key)
    return issued


@dataclass(frozen=True)
class Pki:
    ca: Path
    other_ca: Path
    server: Issued  # SAN localhost, 127.0.0.1
    named_server: Issued  # SAN cbir-shard.test only (server_name_override)
    other_server: Issued  # signed by the other CA
    client: Issued
    other_client: Issued  # signed by the other CA


def make_pki(directory: Path) -> Pki:
    ca = make_ca(directory, "cbir-test")
    other = make_ca(directory, "unrelated")
    local = (["localhost"], ["127.0.0.1"])
    return Pki(
        ca=ca.cert_path,
        other_ca=other.cert_path,
        server=issue(ca, directory, "server", *local, server=True),
        named_server=issue(ca, directory, "named-server", ["cbir-shard.test"], [], server=True),
        other_server=issue(other, directory, "other-server", *local, server=True),
        client=issue(ca, directory, "coordinator", [], [], server=False),
        other_client=issue(other, directory, "intruder", [], [], server=False),
    )
