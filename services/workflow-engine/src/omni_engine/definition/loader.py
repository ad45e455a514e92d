"""Reading a workflow definition: YAML (or JSON) text, a file, a directory of files.

The YAML dialect is the safe subset with YAML 1.2 booleans (only ``true``/``false``; ``yes``,
``no``, ``on`` and ``off`` stay strings) and no implicit timestamps (dates stay strings), so every
value is plain JSON data. Before anything is built from the text, its nodes are checked for what
PyYAML would pass silently or choke on: duplicate keys, recursive aliases, nesting past
``MAX_DEPTH`` and documents past ``MAX_NODES`` nodes. A problem found in the text carries its line.

What is read goes to ``checks.check_document``; a definition that passes is stored as its
canonical JSON, which must fit in ``MAX_FILE_BYTES`` too, and is known by that JSON's hash.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from omni_contract.templates import PathPart

from omni_engine.definition.checks import check_document
from omni_engine.definition.errors import Problems, WorkflowError, WorkflowValidationError, quote
from omni_engine.definition.limits import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES
from omni_engine.definition.model import WorkflowDefinition, address_field, canonical_json

# libyaml's parser when PyYAML has it (the wheels do): some twenty times faster than the pure
# Python one, which took seconds to refuse a 10,000-step definition on a busy machine.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_SafeLoader):  # type: ignore[valid-type,misc]  # chosen at import time
    """Safe YAML with YAML 1.2 booleans and no implicit timestamps: values stay JSON data."""


_BOOL_TAG = "tag:yaml.org,2002:bool"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL_TAG, _TIMESTAMP_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _read_yaml(text: str, problems: Problems) -> Any:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        problems.node = node
        if node is None:
            return None
        _check_nodes(node, (), problems, set(), [0])
        if problems.errors:
            return None
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        detail = exc.problem or exc.context or "syntax error"
        if exc.problem and exc.context:
            detail += f" ({exc.context}"
            if exc.context_mark is not None:
                detail += f" on line {exc.context_mark.line + 1}"
            detail += ")"
        problems.add((), f"invalid YAML: {detail}", line=mark.line + 1 if mark else None)
    except yaml.YAMLError as exc:
        problems.add((), f"invalid YAML: {exc}")
    except RecursionError:  # the parser itself recurses: a document nested thousands deep
        problems.add((), f"invalid YAML: nested far more than {MAX_DEPTH} levels deep")
    finally:
        loader.dispose()
    return None


def _check_nodes(
    node: yaml.Node, path: tuple[PathPart, ...], problems: Problems, ancestors: set[int], count: list[int]
) -> None:
    """Duplicate keys (which PyYAML would silently collapse), recursive aliases, runaway size."""
    count[0] += 1
    if count[0] > MAX_NODES:
        raise yaml.YAMLError(f"document has more than {MAX_NODES} nodes")
    if len(path) > MAX_DEPTH:
        problems.add(
            path[:MAX_DEPTH], f"nested more than {MAX_DEPTH} levels deep", line=node.start_mark.line + 1
        )
        return
    if id(node) in ancestors:
        problems.add(path, "recursive YAML alias", line=node.start_mark.line + 1)
        return
    ancestors = ancestors | {id(node)}
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            if name is not None and name in seen and key.tag != "tag:yaml.org,2002:merge":
                problems.add(
                    (*path, name),
                    f"duplicate key {quote(name)} (first written on line {seen[name]})",
                    line=key.start_mark.line + 1,
                )
            elif name is not None:
                seen[name] = key.start_mark.line + 1
            _check_nodes(value, (*path, name if name is not None else "?"), problems, ancestors, count)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_nodes(item, (*path, index), problems, ancestors, count)


def parse_workflow(
    text_or_dict: str | bytes | Mapping[str, Any], source: str = "<memory>"
) -> WorkflowDefinition:
    """Parse and validate one definition from YAML (or JSON) text or already-parsed data.

    ``source`` names it in errors (a file path, or ``<api>``). Raises ``WorkflowValidationError``
    carrying every problem found.
    """
    problems = Problems(source, None)
    data: Any
    if isinstance(text_or_dict, bytes):
        if len(text_or_dict) > MAX_FILE_BYTES:
            problems.add((), f"the definition is {len(text_or_dict)} bytes, more than {MAX_FILE_BYTES}")
            raise problems.failure()
        try:
            text_or_dict = text_or_dict.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.add((), f"not UTF-8 text: {exc}")
            raise problems.failure() from None
    if isinstance(text_or_dict, str):
        size = len(text_or_dict.encode("utf-8", "surrogatepass"))
        if size > MAX_FILE_BYTES:
            problems.add((), f"the definition is {size} bytes, more than {MAX_FILE_BYTES}")
            raise problems.failure()
        data = _read_yaml(text_or_dict, problems)
        if problems.errors:
            raise problems.failure()
    else:
        data = copy.deepcopy(dict(text_or_dict))
    defn = check_document(data, problems)
    text = canonical_json(defn)
    size = len(text.encode())
    if size > MAX_FILE_BYTES:
        problems.add((), f"the definition is {size} bytes as stored (JSON), more than {MAX_FILE_BYTES}")
        raise problems.failure()
    defn._source = source
    defn._hash = hashlib.sha256(text.encode()).hexdigest()
    return defn


def load_workflow_file(path: str | Path) -> WorkflowDefinition:
    """Read and validate one file; errors name the file as ``str(path)``."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise WorkflowValidationError(
            source, [WorkflowError(source, None, None, f"cannot read file: {exc.strerror or exc}")]
        ) from None
    return parse_workflow(raw, source)


def load_workflow_dir(directory: str | Path) -> tuple[list[WorkflowDefinition], list[WorkflowError]]:
    """Load every ``*.yaml`` / ``*.yml`` file directly in ``directory`` (sorted by name; hidden files
    skipped). A bad file contributes its errors and never stops the others; a second file that
    reuses a workflow name already loaded is an error of its own. Raises ``NotADirectoryError``
    when ``directory`` is not one."""
    root = Path(directory)
    if not root.is_dir():
        raise NotADirectoryError(str(root))
    definitions: list[WorkflowDefinition] = []
    errors: list[WorkflowError] = []
    seen: dict[str, str] = {}
    files = sorted(
        p
        for p in root.iterdir()
        if p.suffix in (".yaml", ".yml") and not p.name.startswith(".") and p.is_file()
    )
    for file in files:
        try:
            defn = load_workflow_file(file)
        except WorkflowValidationError as exc:
            errors.extend(exc.errors)
            continue
        if defn.id in seen:
            errors.append(
                WorkflowError(
                    defn.source,
                    None,
                    address_field(defn),
                    f"workflow {defn.id!r} is already defined in {seen[defn.id]}",
                )
            )
            continue
        seen[defn.id] = defn.source
        definitions.append(defn)
    return definitions, errors
