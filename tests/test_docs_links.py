"""Every relative link of the README and the documents points at a file (and heading) that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = sorted(
    [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("runtime/**/*.md"), *ROOT.glob("python/**/*.md")]
)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    found = set()
    for line in FENCE.sub("", markdown).splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(FENCE.sub("", path.read_text())) if not re.match(r"[a-z]+://|mailto:", t)]


def test_the_documents_exist_and_link_to_each_other():
    names = {p.relative_to(ROOT).as_posix() for p in DOCUMENTS}
    assert {"README.md", "docs/exporting.md", "docs/benchmarks.md", "runtime/trt/JETSON.md"} <= names
    readme_links = {t.split("#")[0] for t in relative_links(ROOT / "README.md")}
    # every document under docs/ is reachable from the front page
    assert {p.relative_to(ROOT).as_posix() for p in ROOT.glob("docs/*.md")} <= readme_links


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(doc: Path):
    broken = []
    for target in relative_links(doc):
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)


def test_anchor_rules_match_github():
    # the slug rule above, checked on headings of the kinds the documents use
    md = "# Serving: `sdar-serve`\n## Memory, time and disk at real sizes\n```\n# not a heading\n```\n"
    assert anchors(md) == {"serving-sdar-serve", "memory-time-and-disk-at-real-sizes"}
