"""TLS towards the registry: one ``ssl.SSLContext`` from ``Config.verify`` and ``Config.cert``.

Every httpx client the library opens towards the registry (requests, the
watch pool, the blocking one used at interpreter exit) is given the same
context, built once when the backend is made. Files are read then, and a
missing, unreadable or invalid one is a :class:`ConfigError` naming it, so a
mistake shows at start-up rather than as a failed handshake later.

``verify=True`` trusts the system's roots (OpenSSL's default paths), as the
CLI and the Rust client do; a private CA such as the one ``muster tls ca
create`` makes is given as a path instead.
"""

from __future__ import annotations

import os
import ssl
from typing import NoReturn, Optional, Union

from ._exceptions import ConfigError

Verify = Union[bool, str, "os.PathLike[str]", ssl.SSLContext]
"""``True`` (system roots), a CA bundle (file or directory), ``False`` (no
verification) or a ready ``ssl.SSLContext``."""
CertFiles = Union[str, "os.PathLike[str]", tuple[Union[str, "os.PathLike[str]"], ...]]
"""A PEM file holding the certificate and its key, or ``(cert, key)``."""


def ssl_context(verify: Verify = True, cert: Optional[CertFiles] = None) -> ssl.SSLContext:
    """The context for ``https://`` registry addresses; :class:`ConfigError`
    naming the file when one cannot be used."""
    if isinstance(verify, ssl.SSLContext):
        if cert is not None:
            raise ConfigError(
                "cert: give the client certificate inside the ssl.SSLContext of verify"
            )
        return verify
    if isinstance(verify, bool):
        ctx = ssl.create_default_context()
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = _trusting(os.fspath(verify))
    if cert is not None:
        _load_identity(ctx, cert)
    return ctx


def _trusting(path: str) -> ssl.SSLContext:
    """A context trusting only the CA certificates in ``path``."""
    if os.path.isdir(path):
        # OpenSSL reads a hashed directory lazily: nothing to check now.
        return ssl.create_default_context(capath=path)
    text = _read("verify", path, "a CA bundle")
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ConfigError(f"verify: {path!r} holds no PEM certificate (expected a CA bundle)")
    try:
        return ssl.create_default_context(cadata=text)
    except (ssl.SSLError, ValueError) as e:
        raise ConfigError(f"verify: {path!r} is not a valid PEM CA bundle: {e}") from None


def _load_identity(ctx: ssl.SSLContext, cert: CertFiles) -> None:
    if isinstance(cert, tuple):
        if len(cert) != 2:
            raise ConfigError("cert: give a PEM file, or a (cert, key) pair of them")
        cert_path, key_path = os.fspath(cert[0]), os.fspath(cert[1])
    else:
        cert_path = key_path = os.fspath(cert)
    text = _read("cert", cert_path, "a client certificate")
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ConfigError(f"cert: {cert_path!r} holds no PEM certificate")
    key = text if key_path == cert_path else _read("cert", key_path, "a private key")
    if "PRIVATE KEY-----" not in key:
        if key_path == cert_path:
            raise ConfigError(
                f"cert: {cert_path!r} holds a certificate but no private key: give the key "
                "as cert=(cert, key) (or MUSTER_CLIENT_KEY)"
            )
        raise ConfigError(f"cert: {key_path!r} holds no PEM private key")
    if "ENCRYPTED" in key:
        # OpenSSL would prompt on the terminal for a passphrase: a service
        # would hang at start-up instead of failing.
        raise ConfigError(f"cert: the private key in {key_path!r} is encrypted; give it decrypted")
    try:
        ctx.load_cert_chain(cert_path, key_path, password=_no_password)
    except ssl.SSLError as e:
        raise ConfigError(
            f"cert: {cert_path!r} and its key {key_path!r} are not a matching PEM certificate "
            f"and private key: {e}"
        ) from None
    except OSError as e:
        raise ConfigError(f"cert: cannot read {e.filename or cert_path!r}: {e.strerror}") from None


def _no_password() -> NoReturn:
    raise ConfigError("cert: the private key is encrypted; give it decrypted")


def _read(option: str, path: str, what: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"{option}: cannot read {what} from {path!r}: {e.strerror}") from None
