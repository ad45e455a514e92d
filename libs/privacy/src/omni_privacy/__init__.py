"""Omni data protection: PII detection and tokenisation, envelope encryption."""
