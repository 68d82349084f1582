"""One certificate issuance (RFC 8555 7): certbot's ``acme`` library does the protocol (JWS,
nonces, the directory, orders, polling); this module only drives it: the account (made once,
its key kept in ``acme_account_key``), a new order for the names, the http-01 answers published
through the token store while the CA checks them, the CSR for a new key, the full chain.

Everything here blocks (``requests``): mailsuite.acme.service runs ``issue`` in the thread pool,
never on the reactor.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass

import josepy as jose
from acme import challenges, client, crypto_util, errors, messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailsuite.acme import certfiles
from mailsuite.acme.resolve import ResolvingAdapter
from mailsuite.acme.tokens import TokenStore
from mailsuite.fsutil import atomic_write

USER_AGENT = "mailsuite-acme"
NETWORK_TIMEOUT = 30  # seconds per HTTPS request to the CA
ORDER_TIMEOUT = 120.0  # seconds for the CA to check every name and sign


@dataclass(frozen=True)
class Settings:
    """What one issuance needs (from ``[tls]``; mailsuite.acme.service makes it)."""

    server: str
    email: str
    ca_file: str
    account_key: str
    names: tuple[str, ...]
    #: host -> addresses, through [mail] dns_resolver (mailsuite.acme.resolve); None: getaddrinfo
    lookup: Callable[[str], list[str]] | None = None


@dataclass(frozen=True)
class Issued:
    fullchain_pem: bytes
    key_pem: bytes


class IssueError(Exception):
    """The CA did not issue; the message says why (for the log)."""


def account_key(path: str) -> jose.JWKRSA:
    """The account key at ``path``, made (RSA 2048, mode 0600) when there is none."""
    try:
        with open(path, "rb") as f:
            pem = f.read()
    except FileNotFoundError:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
        atomic_write(path, pem, tmp=f"{path}.tmp", mode=0o600)
    loaded = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise IssueError(f"{path}: the ACME account key is not an RSA key")
    return jose.JWKRSA(key=loaded)


def connect(settings: Settings) -> client.ClientV2:
    """A client of the directory, with the account registered (or found: RFC 8555 7.3.1, the
    same key names the same account). ``acme = yes`` is the admin's agreement to the CA's terms
    of service."""
    key = account_key(settings.account_key)
    verify: bool | str = settings.ca_file or True  # requests' verify: a CA bundle path too
    net = client.ClientNetwork(key, user_agent=USER_AGENT, timeout=NETWORK_TIMEOUT,
                               verify_ssl=verify)  # type: ignore[arg-type]
    if settings.lookup is not None:
        net.session.mount("https://", ResolvingAdapter(settings.lookup))
    directory = client.ClientV2.get_directory(settings.server, net)
    acme = client.ClientV2(directory, net)
    registration = messages.NewRegistration.from_data(
        email=settings.email or None, terms_of_service_agreed=True)
    try:
        acme.new_account(registration)
    except errors.ConflictError as e:  # the account of this key exists: use it
        net.account = messages.RegistrationResource(uri=e.location,
                                                    body=messages.Registration())
    return acme


def _http01(authz: messages.AuthorizationResource) -> messages.ChallengeBody:
    for challb in authz.body.challenges:
        if isinstance(challb.chall, challenges.HTTP01):
            return challb
    raise IssueError(f"the CA offers no http-01 challenge for {authz.body.identifier.value}")


def issue(settings: Settings, tokens: TokenStore) -> Issued:
    """A certificate for ``settings.names`` (blocking). IssueError, or the library's
    errors (network, protocol), when there is none; the tokens are withdrawn either way."""
    acme = connect(settings)
    key_pem = certfiles.new_key()
    csr = crypto_util.make_csr(key_pem, list(settings.names))
    order = acme.new_order(csr)
    published: list[str] = []
    try:
        answers = []
        for authz in order.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                continue  # the CA remembers an earlier check (authorization reuse)
            challb = _http01(authz)
            response, validation = challb.response_and_validation(acme.net.key)
            token = challb.chall.encode("token")
            tokens.put(token, validation)
            published.append(token)
            answers.append((challb, response))
        for challb, response in answers:
            acme.answer_challenge(challb, response)
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_TIMEOUT)
        try:
            done = acme.poll_and_finalize(order, deadline)
        except errors.ValidationError as e:
            raise IssueError(describe_validation(e)) from None
    finally:
        for token in published:
            tokens.remove(token)
    if not done.fullchain_pem:
        raise IssueError("the CA finalized the order without a certificate")
    return Issued(done.fullchain_pem.encode("ascii"), key_pem)


def describe_validation(error: errors.ValidationError) -> str:
    """The CA's reason per name (``mail.example.com: connection refused``)."""
    parts = []
    for authz in error.failed_authzrs:
        for challb in authz.body.challenges:
            if challb.error is not None:
                detail = challb.error.detail or challb.error.typ
                parts.append(f"{authz.body.identifier.value}: {detail}")
    return "the CA could not check " + "; ".join(parts or ["the names"])
