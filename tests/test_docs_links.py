"""Every link in README, docs/ and the studies' --help resolves inside a fresh clone (no paths outside it)."""

import re

import pytest

from conftest import ROOT
from tune_jobs.cli import build_parser
from tune_jobs.study import builtin_studies, load_study

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def anchors(page) -> set[str]:
    """GitHub's anchors of a Markdown page's headings (lower case, punctuation dropped, spaces to dashes)."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_resolve_in_the_repository(page):
    text = page.read_text()
    assert "shared/" not in text, f"{page.name} points outside the repository"
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"https?://", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists() and ROOT in file.parents or file == page, f"{page.name}: {target} does not resolve"
        if anchor and file.suffix == ".md":
            assert anchor in anchors(file), f"{page.name}: no heading for #{anchor} in {file.name}"


def test_every_builtin_study_has_a_protocol_page_named_in_its_help():
    for name in builtin_studies():
        study = load_study(name)
        text = build_parser(study, name).format_help()
        assert f"docs/{name}.md" in text and (ROOT / "docs" / f"{name}.md").exists(), name
        assert "shared/" not in text, name
