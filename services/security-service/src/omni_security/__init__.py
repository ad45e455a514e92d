"""Omni security-service."""
