"""The customer path: the HTTP proxy in front of the legacy service."""
