"""TLS and mutual TLS for every server and channel, configured by the same four flags.

A server with `--tls-cert/--tls-key` serves TLS only; with `--mtls` it also requires a client
certificate signed by `--tls-ca`. A client with `--tls-ca` verifies the server against it and,
with `--tls-cert/--tls-key`, presents its own certificate. `make_certificates` writes a
throwaway CA and certificates for tests and first deployments (`fedstream make-certs`).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc

from fedstream.common.options import option


@dataclass(frozen=True)
class TlsConfig:
    ca: str | None = option(None, "PEM bundle of the CA(s) that sign the peers' certificates; "
                                  "clients verify servers against it", flag="--tls-ca")
    cert: str | None = option(None, "this process's PEM certificate chain", flag="--tls-cert")
    key: str | None = option(None, "this process's PEM private key", flag="--tls-key")
    mutual: bool = option(False, "servers require client certificates signed by --tls-ca",
                          flag="--mtls")

    def __post_init__(self):
        if bool(self.cert) != bool(self.key):
            raise ValueError("--tls-cert and --tls-key go together: give both or neither")
        if self.mutual and not (self.ca and self.cert):
            raise ValueError("--mtls needs --tls-ca (to verify clients) and --tls-cert/--tls-key")

    def server_credentials(self) -> grpc.ServerCredentials | None:
        if not self.cert:
            return None
        return grpc.ssl_server_credentials(
            [(_read(self.key), _read(self.cert))],
            root_certificates=_read(self.ca) if self.mutual else None,
            require_client_auth=self.mutual)

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        if not self.ca:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca),
            private_key=_read(self.key) if self.key else None,
            certificate_chain=_read(self.cert) if self.cert else None)


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read TLS file {path}: {e.strerror}") from e


def make_certificates(directory: str | Path, hosts: list[str], *, days: int = 30) -> dict[str, Path]:
    """A CA plus a server certificate for `hosts` and a client certificate, as PEM files."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError as e:
        raise RuntimeError("making certificates needs `pip install cryptography` "
                           "(or the openssl recipe in docs/how-to/tls-and-tokens.md)") from e
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def write(stem: str, key, cert) -> None:
        (out / f"{stem}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        (out / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (x509.CertificateBuilder().subject_name(name("fedstream test CA"))
               .issuer_name(name("fedstream test CA")).public_key(ca_key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now)
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .sign(ca_key, hashes.SHA256()))
    write("ca", ca_key, ca_cert)

    def leaf(stem: str, common_name: str, usage, sans) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(common_name))
                   .issuer_name(ca_cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now)
                   .not_valid_after(now + datetime.timedelta(days=days))
                   .add_extension(x509.ExtendedKeyUsage(usage), critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        write(stem, key, builder.sign(ca_key, hashes.SHA256()))

    sans = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    # the servers' certificate also authenticates the coordinator as the data pool's client
    leaf("server", hosts[0], [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
         sans)
    leaf("client", "fedstream worker", [ExtendedKeyUsageOID.CLIENT_AUTH], [])
    return {stem: out / f"{stem}.pem" for stem in ("ca", "server", "client")}
