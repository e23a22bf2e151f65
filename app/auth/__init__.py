"""Access control and the audit trail: who may do what, and a record of who did it.

* :mod:`app.auth.middleware`: one pure ASGI middleware checks every HTTP request
  (bearer tokens, RFC 6750) and writes its audit event;
* :mod:`app.auth.tokens`: API tokens (``pictor token``), stored hashed;
* :mod:`app.auth.oidc`: OIDC / JWT access tokens (RFC 7519, keys from a JWK Set, RFC 7517);
* :mod:`app.auth.links`: signed, expiring study links for EMR embedding;
* :mod:`app.auth.audit`: the batched, append-only audit writer;
* :mod:`app.auth.fhir`: audit events as FHIR R4 AuditEvent resources (IHE BALP).
"""
