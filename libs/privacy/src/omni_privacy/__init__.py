"""Omni data protection: PII detection and tokenisation, envelope encryption.

Import from the modules (their names are also the names of their main functions, so nothing is
re-exported here; ``omni_privacy.detect`` stays the module):

- ``omni_privacy.detect``: offline, rule-based PII detection (Presidio entity names).
- ``omni_privacy.redact``: PII in JSON-like values replaced by per-run tokens; resolve and mask.
- ``omni_privacy.envelope``: AES-256-GCM records under a data key per run, wrapped by KEKs.
- ``omni_privacy.corpus``: a labelled synthetic corpus and a precision/recall scorer.
"""
