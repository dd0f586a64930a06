"""Plumbing the science imports: file caches, safe writes, JSON, notebook parameters, provenance,
weight sources and conversion, progress bars. It imports nothing else from lab/ (tests/test_layout.py)."""
