"""The limits of one workflow definition, checked before anything is stored.

A stored definition must fit in one RPC reply, and a run's summary with one entry per step too.
Messages echo at most a short prefix of what they quote, and at most ``MAX_ERRORS`` problems are
reported per definition, so the error of a huge or very wrong definition fits in a reply as well.
"""

from __future__ import annotations

from omni_contract.rpc import MAX_DEFINITION_BYTES

MAX_FILE_BYTES = MAX_DEFINITION_BYTES  # the YAML or JSON text, and the stored (canonical) JSON
MAX_STEPS = 1000  # the long-history benchmark runs 1,000 sequential steps
MAX_DEPTH = 32  # nesting of mappings and lists, from the top of the document
MAX_NAME_LENGTH = 200
MAX_VERSION_LENGTH = 64
MAX_DESCRIPTION_LENGTH = 4000
MAX_ERRORS = 50  # problems reported per definition; the rest are counted
MAX_MESSAGE_LENGTH = 500  # of one problem's message (a quoted value is cut well before)
MAX_FIELD_LENGTH = 200  # of one problem's field path
MAX_NODES = 100_000  # YAML nodes in one document (aliases can make a small text huge)
