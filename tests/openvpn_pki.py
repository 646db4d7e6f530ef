"""Certificates for the in-memory OpenVPN tests (client and server alike)."""

from __future__ import annotations

import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def cert(cn: str, key: Any, issuer: x509.Certificate | None, issuer_key: Any,
         ca: bool = False, eku: Any = None, key_usage: bool = False) -> x509.Certificate:
    """A day-long certificate for ``cn`` (self-signed without ``issuer``), with the
    extended key usage ``eku`` and, if ``key_usage``, the key usage openvpn's
    remote-cert-tls wants."""
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder().subject_name(name(cn))
         .issuer_name(issuer.subject if issuer else name(cn)).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(hours=1))
         .not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if eku is not None:
        b = b.add_extension(x509.ExtendedKeyUsage([eku]), False)
    if key_usage:
        b = b.add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=True,
                          key_cert_sign=False, crl_sign=False, encipher_only=False,
                          decipher_only=False), True)
    return b.sign(issuer_key, hashes.SHA256())


def pem(obj: Any) -> bytes:
    if isinstance(obj, (x509.Certificate, x509.CertificateRevocationList)):
        return obj.public_bytes(serialization.Encoding.PEM)
    return bytes(obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
