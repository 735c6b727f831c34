"""authproxy: API-key reverse auth-proxy for AnywhereSCADA."""

__version__ = "0.1.0"
