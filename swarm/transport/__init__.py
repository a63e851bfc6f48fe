"""Transports: how signed envelope bytes move between nodes. One interface (``base.Transport``), one
module per backend, one conformance suite (tests/integration/test_transport_conformance.py)."""
