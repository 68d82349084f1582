"""Certificates from an ACME CA (RFC 8555: Let's Encrypt) for myhostname and the autoconfig
names, answered over http-01 by the autoconfig HTTP responder, renewed before they expire.

- ``conf``: the ``[tls] acme*`` keys' values and what follows from them (the names, the paths);
- ``tokens``: the http-01 challenge files (written by the ACME client, served by autoconfig);
- ``certfiles``: which certificate is due (missing, self-signed, other names, expiring) and the
  atomic writing of the new one;
- ``client``: one issuance with certbot's ``acme`` library (blocking: run in a thread);
- ``service``: the Twisted service that decides at start and daily, runs the client in the
  thread pool, writes the files and has the TLS reloaded (``add_acme`` is tap.py's one line).

Where it runs: in the one-process server, in that process; with privilege separation, in the
root master (see ``service``'s docstring for why), while the network process serves the tokens.

Only http-01: certbot's ``acme`` (5.x) no longer implements tls-alpn-01, and the client is not
ours to write. acme_server's name is looked up through ``[mail] dns_resolver``
(``resolve``).
"""
