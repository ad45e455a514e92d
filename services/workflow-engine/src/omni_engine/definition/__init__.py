"""Workflow definitions: the YAML format, its typed model, and the checks made when one is loaded.

One file holds one workflow::

    name: Bilingual Coach              # display name: free text (printable, at most 200 characters)
    id: bilingual-coach                # optional address, [a-z0-9][a-z0-9-_.]*, used in URLs;
                                       # without it, the slug of the name (see ``workflow_slug``)
    description: ...
    version: 1.0.0                     # a string; quote it if YAML would read it as a number.
                                       # A version is immutable once registered.
    trigger:
      event: app.coach.session.start   # NATS subject under app.
      payload:                         # field: type, "?" after the name marks it optional
        userId: string
        audioData?: string
    retry: {maxAttempts: 3}            # optional: the default retry policy of every step
    steps:                             # a graph: a step runs once the steps it needs are done
      - name: speech_to_text           # [a-z_][a-z0-9_]*, unique
        when: has(trigger.payload.audioData)   # optional CEL condition; false -> skipped
        tool: stt.transcribe           # <category>.<action>
        provider: openrouter|gemini    # tried in order; a YAML list works too
        config: {timeout: 12000}       # free-form; ``timeout`` (ms) must be a positive integer;
                                       # ``fallback``: more providers; ``maxTokens``: budget estimate
        input: {audioData: "${trigger.payload.audioData}"}
        output: {text: string}         # declared output fields
        retry: {maxAttempts: 5, initialInterval: 200, backoffRate: 2, maxInterval: 5000,
                jitter: 0.2, retryOn: [timeout, server, rate_limited]}
        on_error: fail                 # fail | continue | <name of a handler step>
        needs: [other_step]            # run after these (template references add more)
        compensate: {tool: ..., provider: ..., input: {...}}   # undo, when the run fails later
      - name: each_line
        for_each: "${steps.split.output.lines}"   # one call per item, ${item} and ${index}
        concurrency: 4                 # at most this many items in flight
        ...
      - name: approval
        wait: {event: app.review.decided, key: "${trigger.payload.sessionId}",
               match: sessionId, timeout: 3600000}   # waits for an outside event, no tool
    guards:                            # optional
      budget: {maxMs: 60000, maxTokens: 8000, maxCost: 0.5}
      security: {piiRedaction: true, dataRetention: 30d, encryption: true}
      fallbacks: {stt: local}          # tool category (or step name) -> last-resort provider

Field types are ``string``, ``number``, ``integer``, ``boolean``, ``object``, ``array`` and ``any``.
A payload field may also be written in long form: ``userId: {type: string, required: true,
description: ...}``.

The package, by what each part is:

- ``model``: the typed model (pydantic) and its canonical JSON form, from which a definition's
  content hash comes;
- ``loader``: reading YAML (or JSON) text, files and directories, with line numbers;
- ``checks``: structure, then meaning, every problem of a stage reported at once;
- ``errors``: ``WorkflowError``, one problem naming the file, the step, the field and, for YAML
  text, the line;
- ``schema``: the trigger payload as a JSON Schema, and the check of a payload against it;
- ``limits``: what a definition may not exceed, checked before anything is stored.
"""

from omni_contract.rpc import MAX_DEFINITION_BYTES

from omni_engine.definition.errors import WorkflowError, WorkflowValidationError
from omni_engine.definition.limits import (
    MAX_DEPTH,
    MAX_DESCRIPTION_LENGTH,
    MAX_ERRORS,
    MAX_FIELD_LENGTH,
    MAX_FILE_BYTES,
    MAX_MESSAGE_LENGTH,
    MAX_NAME_LENGTH,
    MAX_STEPS,
    MAX_VERSION_LENGTH,
)
from omni_engine.definition.loader import load_workflow_dir, load_workflow_file, parse_workflow
from omni_engine.definition.model import (
    DEFAULT_RETRY_ON,
    FIELD_NAME_RE,
    FIELD_TYPES,
    MAX_ID_LENGTH,
    NEVER_RETRY,
    PROVIDER_RE,
    STEP_NAME_RE,
    TEXT_ONLY,
    TOOL_RE,
    WORKFLOW_ID_RE,
    Budget,
    Compensation,
    FieldType,
    Guards,
    PayloadField,
    RetryPolicy,
    Security,
    Step,
    Trigger,
    Wait,
    WorkflowDefinition,
    address_field,
    canonical_json,
    definition_to_dict,
    workflow_slug,
)
from omni_engine.definition.schema import FieldError, to_json_schema, validate_payload

__all__ = [
    "DEFAULT_RETRY_ON",
    "FIELD_NAME_RE",
    "FIELD_TYPES",
    "MAX_DEFINITION_BYTES",
    "MAX_DEPTH",
    "MAX_DESCRIPTION_LENGTH",
    "MAX_ERRORS",
    "MAX_FIELD_LENGTH",
    "MAX_FILE_BYTES",
    "MAX_ID_LENGTH",
    "MAX_MESSAGE_LENGTH",
    "MAX_NAME_LENGTH",
    "MAX_STEPS",
    "MAX_VERSION_LENGTH",
    "NEVER_RETRY",
    "PROVIDER_RE",
    "STEP_NAME_RE",
    "TEXT_ONLY",
    "TOOL_RE",
    "WORKFLOW_ID_RE",
    "Budget",
    "Compensation",
    "FieldError",
    "FieldType",
    "Guards",
    "PayloadField",
    "RetryPolicy",
    "Security",
    "Step",
    "Trigger",
    "Wait",
    "WorkflowDefinition",
    "WorkflowError",
    "WorkflowValidationError",
    "address_field",
    "canonical_json",
    "definition_to_dict",
    "load_workflow_dir",
    "load_workflow_file",
    "parse_workflow",
    "to_json_schema",
    "validate_payload",
    "workflow_slug",
]
