"""The repository stands on its own: no tracked file points outside it, and every relative link in its
Markdown leads to a file that exists in it. (Plain unit tests: no servers.)"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

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
