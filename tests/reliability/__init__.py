"""Malformed inputs across every layer: each fails with an error that names where the problem is."""
