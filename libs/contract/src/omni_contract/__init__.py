"""Omni's message contract: every subject, stream, event type and payload, defined once.

Services import names from here instead of writing subjects or type strings inline, so the
contract can be read (and generated into ``proto/``) from one place.
"""

from omni_contract.envelope import Envelope, decode_envelope, encode_envelope, new_envelope

__all__ = ["Envelope", "decode_envelope", "encode_envelope", "new_envelope"]
