"""TLS for the control channel over memory BIOs (pyOpenSSL), with OpenVPN's peer checks.

pyOpenSSL because the data keys may come from the TLS key-material exporter (RFC 5705),
which the standard library's ``ssl`` does not offer. No socket is involved: the client
feeds received TLS bytes in with :meth:`TlsSession.feed` and takes bytes to send with
:meth:`TlsSession.outgoing`.

Checks, in the verify callback so a refused server never completes the handshake: the
chain up to the configured CA, ``remote-cert-tls server`` (extended key usage TLS Web
Server Authentication, and a key usage fit for a server when present), and
``verify-x509-name`` (full subject, CN, or CN prefix).

The server side (:class:`TlsServerContext`) runs the same callback the other way round:
``verify-client-cert none|optional|require``, the chain to the CA, ``crl-verify`` (the
client's serial in a CRL signed by the CA), ``remote-cert-tls client`` and ``tls-verify``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto

from ...errors import ConfigError

#: OpenSSL verify error numbers worth a readable word in the log
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in chain",
    20: "unable to get local issuer certificate (not signed by the configured CA)",
    21: "unable to verify the first certificate",
    26: "unsuitable certificate purpose",
}

_SHORT = {
    NameOID.COUNTRY_NAME: "C", NameOID.STATE_OR_PROVINCE_NAME: "ST",
    NameOID.LOCALITY_NAME: "L", NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU", NameOID.COMMON_NAME: "CN",
    NameOID.EMAIL_ADDRESS: "emailAddress",
}


def subject_string(cert: x509.Certificate) -> str:
    """The subject as OpenVPN prints it for verify-x509-name: ``C=.., O=.., CN=..``."""
    parts = []
    for attr in cert.subject:
        name = _SHORT.get(attr.oid, attr.oid.dotted_string)
        parts.append(f"{name}={attr.value!s}")
    return ", ".join(parts)


def common_name(cert: x509.Certificate) -> str:
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else ""


#: remote-cert-tls ROLE: the extended key usage the peer's certificate must have
_EKU = {"server": (ExtendedKeyUsageOID.SERVER_AUTH, "TLS Web Server Authentication"),
        "client": (ExtendedKeyUsageOID.CLIENT_AUTH, "TLS Web Client Authentication")}


def check_eku(cert: x509.Certificate, role: str) -> str | None:
    """Why ``cert`` fails ``remote-cert-tls ROLE``, or None when it passes."""
    oid, label = _EKU[role]
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return f"{role} certificate has no extended key usage (remote-cert-tls {role})"
    if oid not in eku:
        return (f"{role} certificate lacks the {label} extended key "
                f"usage (remote-cert-tls {role})")
    if role != "server":
        return None
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None
    if not (ku.digital_signature or ku.key_encipherment or ku.key_agreement):
        return "server certificate key usage unfit for a TLS server (remote-cert-tls server)"
    return None


def check_x509_name(cert: x509.Certificate, name: str, kind: str) -> str | None:
    if kind == "name":
        ok = common_name(cert) == name
    elif kind == "name-prefix":
        ok = common_name(cert).startswith(name)
    else:
        ok = subject_string(cert) == name
    if ok:
        return None
    return (f"server certificate {subject_string(cert)!r} does not match "
            f"verify-x509-name {name!r} {kind}")


def _load_certs(pem: bytes, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise ConfigError(f"{what}: not a PEM certificate ({exc})") from None
    return certs


def _use_cert_key(ctx: SSL.Context, cert_pem: bytes, key_pem: bytes) -> None:
    chain = _load_certs(cert_pem, "cert")
    if not chain:
        raise ConfigError("cert: no certificate found")
    ctx.use_certificate(chain[0])
    for extra in chain[1:]:
        ctx.add_extra_chain_cert(extra)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"key: cannot load private key ({exc})") from None
    ctx.use_privatekey(key)  # type: ignore[arg-type]
    try:
        ctx.check_privatekey()
    except SSL.Error:
        raise ConfigError("key does not match cert") from None


def _add_cas(ctx: SSL.Context, ca_pem: bytes) -> list[x509.Certificate]:
    store = ctx.get_cert_store()
    if store is None:  # pragma: no cover - OpenSSL always gives one
        raise ConfigError("ca: no certificate store")
    cas = _load_certs(ca_pem, "ca")
    if not cas:
        raise ConfigError("ca: no certificate found")
    for ca in cas:
        store.add_cert(crypto.X509.from_cryptography(ca))
    return cas


def _new_context(method: int, tls_version_min: str,
                 ca_pem: bytes) -> tuple[SSL.Context, list[x509.Certificate]]:
    """A context of either end: minimum TLS version and the CAs the peer must chain to."""
    ctx = SSL.Context(method)
    ctx.set_min_proto_version(
        SSL.TLS1_3_VERSION if tls_version_min == "1.3" else SSL.TLS1_2_VERSION
    )
    return ctx, _add_cas(ctx, ca_pem)


@dataclass(frozen=True, slots=True)
class TlsSettings:
    ca_pem: bytes
    cert_pem: bytes | None = None
    key_pem: bytes | None = None
    remote_cert_tls: str | None = None
    verify_x509_name: tuple[str, str] | None = None
    tls_version_min: str = "1.2"
    #: ``tls-verify``: called per certificate of the peer's chain (depth, cert) after
    #: the built-in checks passed; a returned reason refuses the peer
    verify_hook: Callable[[int, x509.Certificate], str | None] | None = None


class TlsContext:
    """One pyOpenSSL context per client configuration, shared by its key states."""

    def __init__(self, settings: TlsSettings) -> None:
        self.settings = settings
        ctx, _ = _new_context(SSL.TLS_CLIENT_METHOD, settings.tls_version_min, settings.ca_pem)
        if settings.cert_pem is not None:
            if settings.key_pem is None:
                raise ConfigError("cert given without key")
            _use_cert_key(ctx, settings.cert_pem, settings.key_pem)
        self.ctx = ctx

    def session(self) -> TlsSession:
        return TlsSession(self)


#: verify-client-cert: whether a client must, may or need not present a certificate
VERIFY_CLIENT_CERT = {"none": SSL.VERIFY_NONE, "optional": SSL.VERIFY_PEER,
                      "require": SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT}


@dataclass(frozen=True, slots=True)
class TlsServerSettings(TlsSettings):
    """A server's: its certificate and key are required, and it checks the client's."""

    verify_client_cert: str = "require"
    #: crl-verify: a PEM CRL, which must be signed by one of the CAs
    crl_pem: bytes | None = None


class TlsServerContext:
    """One pyOpenSSL server context for the server's configuration, shared by every
    client's key states."""

    def __init__(self, settings: TlsServerSettings) -> None:
        mode = VERIFY_CLIENT_CERT.get(settings.verify_client_cert)
        if mode is None:
            raise ConfigError(f"verify-client-cert: {settings.verify_client_cert!r} is not "
                              "none, optional or require")
        self.settings = settings
        ctx, cas = _new_context(SSL.TLS_SERVER_METHOD, settings.tls_version_min,
                                settings.ca_pem)
        if settings.cert_pem is None or settings.key_pem is None:
            raise ConfigError("a server needs cert and key")
        _use_cert_key(ctx, settings.cert_pem, settings.key_pem)
        #: set per connection, with a callback that keeps that connection's refusal reason
        self.verify_mode = mode
        self._cas = cas
        self.crl: x509.CertificateRevocationList | None = None
        self.set_crl(settings.crl_pem)
        self.ctx = ctx

    def set_crl(self, pem: bytes | None) -> None:
        """Use the CRL ``pem`` (None: none) for the handshakes from now on; one not
        signed by a configured CA is a ConfigError and changes nothing."""
        if pem is None:
            self.crl = None
            return
        try:
            crl = x509.load_pem_x509_crl(pem)
        except ValueError as exc:
            raise ConfigError(f"crl-verify: not a PEM CRL ({exc})") from None
        if not any(crl.issuer == ca.subject
                   and crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
                   for ca in self._cas):
            raise ConfigError("crl-verify: the CRL is not signed by the configured CA")
        self.crl = crl

    def revoked(self, cert: x509.Certificate) -> bool:
        """``cert`` is on the current CRL."""
        return self.crl is not None and \
            self.crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None

    def session(self) -> TlsSession:
        return TlsSession(self, server=True)


class TlsSession:
    """One TLS handshake (client, or server when ``server``) and its application stream,
    all in memory."""

    def __init__(self, context: TlsContext | TlsServerContext, server: bool = False) -> None:
        self._settings = context.settings
        self._role = "client" if server else "server"  # whose certificate we check
        #: why the peer was refused (set by the verify callback), for a clear log line
        self.refusal: str | None = None
        self._conn = SSL.Connection(context.ctx, None)
        if server:
            self._crl = context.crl if isinstance(context, TlsServerContext) else None
            mode = context.verify_mode if isinstance(context, TlsServerContext) else 0
            self._conn.set_verify(mode, self._verify)
            self._conn.set_accept_state()
        else:
            self._crl = None
            self._conn.set_verify(SSL.VERIFY_PEER, self._verify)
            self._conn.set_connect_state()
        self.handshake_done = False
        self.closed = False
        #: the peer's chain as verified, by depth (scripts' X509_* / tls_* variables)
        self.chain: dict[int, x509.Certificate] = {}

    def _verify(self, conn: SSL.Connection, cert: crypto.X509, errnum: int, depth: int,
                ok: int) -> bool:
        c = cert.to_cryptography()
        self.chain[depth] = c
        role = self._role
        if not ok:
            word = _VERIFY_ERRORS.get(errnum, f"OpenSSL verify error {errnum}")
            if errnum in (2, 19, 20, 21):
                word += f"; the {role}'s chain does not lead to the configured CA"
            self.refusal = (f"{role} certificate refused at depth {depth} "
                            f"({subject_string(c)!r}): {word}")
            return False
        if depth == 0:
            why = None
            if self._crl is not None and \
                    self._crl.get_revoked_certificate_by_serial_number(c.serial_number):
                why = (f"{role} certificate {subject_string(c)!r} (serial "
                       f"{c.serial_number:x}) is revoked (crl-verify)")
            if why is None and self._settings.remote_cert_tls in _EKU:
                why = check_eku(c, self._settings.remote_cert_tls)
            if why is None and self._settings.verify_x509_name is not None:
                why = check_x509_name(c, *self._settings.verify_x509_name)
            if why is not None:
                self.refusal = why
                return False
        hook = self._settings.verify_hook
        if hook is not None:
            why = hook(depth, c)
            if why is not None:
                self.refusal = why
                return False
        return True

    def step(self) -> bytes:
        """Advance the handshake, then return application bytes received so far.

        Raises ``SSL.Error`` when TLS fails (bad certificate, alert from the peer).
        """
        if not self.handshake_done:
            try:
                self._conn.do_handshake()
            except SSL.WantReadError:
                return b""
            self.handshake_done = True
        chunks = []
        while True:
            try:
                chunks.append(self._conn.recv(65536))
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self.closed = True
                break
        return b"".join(chunks)

    def feed(self, data: bytes) -> None:
        self._conn.bio_write(data)

    def write(self, data: bytes) -> None:
        self._conn.sendall(data)

    def outgoing(self) -> bytes:
        chunks = []
        while True:
            try:
                chunk = self._conn.bio_read(65536)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def export(self, label: bytes, length: int) -> bytes:
        return self._conn.export_keying_material(label, length, None)

    def peer_common_name(self) -> str | None:
        """The CN of the verified peer certificate (None when the peer sent none)."""
        leaf = self.chain.get(0)
        return common_name(leaf) if leaf is not None else None

    @property
    def version(self) -> str:
        return self._conn.get_protocol_version_name()

    @property
    def cipher(self) -> str | None:
        return self._conn.get_cipher_name()
