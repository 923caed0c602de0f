"""README.md and docs/*.md stay short, linked and true to the repository: no link to a missing
file or heading, no config or benchmark path that does not exist."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]

LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
REPO_PATH = re.compile(r"(?<![\w./<-])((?:configs|benchmarks)/[\w./-]*\w\.(?:yaml|py))")


def _prose(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fence = [], None
    for line in text.splitlines():
        marker = re.match(r"\s*(`{3,}|~{3,})", line)
        if marker and (fence is None or marker.group(1)[0] == fence[0]
                       and len(marker.group(1)) >= len(fence)):
            fence = marker.group(1) if fence is None else None
            continue
        if fence is None:
            lines.append(line)
    return lines


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed
    (letters, digits, '_', '-' and spaces stay), spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").replace("*", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in _prose(page.read_text(encoding="utf-8")):
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        slug = github_slug(heading.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(page: Path) -> list[str]:
    out = []
    for line in _prose(page.read_text(encoding="utf-8")):
        out += LINK.findall(INLINE_CODE.sub("", line))
    return out


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= 420, f"README.md has {lines} lines; move the details to a page under docs/"


def test_slugs_follow_github():
    assert github_slug("The gate") == "the-gate"
    assert github_slug("LR range test: `clrctl range-test`") == "lr-range-test-clrctl-range-test"
    assert github_slug("Fine-tuning: parameter groups, stages") == "fine-tuning-parameter-groups-stages"
    assert github_slug("Your own model (`model.name: module:callable`)") == \
        "your-own-model-modelname-modulecallable"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(page):
    broken = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_named_configs_and_benchmarks_exist(page):
    named = set(REPO_PATH.findall(page.read_text(encoding="utf-8")))
    missing = sorted(path for path in named if not (REPO / path).is_file())
    assert not missing, f"{page.relative_to(REPO)} names files that do not exist: {missing}"


def test_the_checks_see_links_and_paths(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A `b` c\n\n[x](other.md#a-b-c) ![y](img.png) `[not](a-link)`\n"
                    "```\n[inside](a-fence)\n# not a heading\n```\nrun configs/digits-fixed.yaml\n")
    assert links(page) == ["other.md#a-b-c", "img.png"]
    assert anchors(page) == {"a-b-c"}
    assert REPO_PATH.findall(page.read_text()) == ["configs/digits-fixed.yaml"]
    assert REPO_PATH.findall("DIR/configs/<point>.yaml runs/x/configs/p.yaml") == []
