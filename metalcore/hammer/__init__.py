"""The hammer proxy: metal-core's HTTP API for metal-hammer, forwarded to the Metal API with HMAC.

    from metalcore.hammer import create_app
    app = create_app(settings, metal_api_client, publisher)     # a Flask WSGI app

Modules: ``app`` (the factory, per-request metrics and bus events), ``boot`` and ``machine`` (one
blueprint per API area), ``docs`` (/apidocs.json), ``errors`` (the one JSON error handler and the
status of every failure), ``spec`` (request validation against metal-core's swagger), ``bootorder``
(boot-device jobs to the IPMI stage), ``observe`` (metrics and bus), ``context`` (request helpers).
The stage that serves it is stages/hammer_proxy.py; the contract is docs/hammer-proxy.md.
"""

from metalcore.hammer.app import close_app, create_app

__all__ = ["close_app", "create_app"]
