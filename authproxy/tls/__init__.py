"""TLS both ways: the listener's certificate (reloadable) and the upstream client's context."""
