"""Principals, API keys, JWT/JWKS verification, secret references and the audit log."""
