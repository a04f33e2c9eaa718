"""Encryption at rest: pure envelope and stream formats (at_rest, segmented) and the key file
the server reads them with (keystore)."""
