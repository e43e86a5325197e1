"""Citations stay inside the repository: no file cites the parity SPEC (users of the repository do not have it), and
every ``docs/METHODS.md §id`` a file cites is a section, quirk or choices-table row of docs/METHODS.md."""

from __future__ import annotations

import collections
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

METHODS = ROOT / "docs" / "METHODS.md"
SUFFIXES = (".py", ".yaml", ".yml", ".md")
THIS_FILE = "tests/test_docs.py"  # holds example citations for the pattern tests
SKIP_DIRS = {".git", ".venv", "runs", "demo_out", "build", "dist", "__pycache__", "node_modules"}

# "SPEC.md §1.1", "SPEC A.6", "SPEC's", "SPEC §B.2": upper-case SPEC as a word. Identifiers such as SPEC_ROWS are
# not citations (no word boundary before the underscore).
SPEC_CITATION = re.compile(r"\bSPEC\b")
# "§2.2", "§3.3-§3.4", "§I4", "§P11", "§A5": in a file that cites docs/METHODS.md, every § names one of its ids.
CITED_ID = re.compile(r"§(\d+(?:\.\d+)*|[A-Z]+\d+)")
# METHODS.md ids: "## 2. IIC" -> 2, "### 2.2 The dense loss" -> 2.2, "#### Quirk I4: ..." -> I4, "| A5 | ..." -> A5.
HEADING_ID = re.compile(r"^#{2,4} (?:Quirk )?(\d+(?:\.\d+)*|[A-Z]+\d+)[.:]?\s", re.MULTILINE)
ROW_ID = re.compile(r"^\| ([A-Z]+\d+) \|", re.MULTILINE)


def _tracked_files() -> list[Path]:
    """Tracked and new, not ignored files (``git ls-files``; a plain walk where git or .git is missing)."""
    try:
        command = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
        out = subprocess.run(command, cwd=ROOT, capture_output=True, check=True).stdout
        return [ROOT / p for p in out.decode().split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        found = []
        for folder, dirs, files in os.walk(ROOT):
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
            found += [Path(folder) / f for f in files]
        return found


def _text_files() -> dict[str, str]:
    """Relative path -> text of every tracked .py/.yaml/.md file outside tests/data (this file excepted)."""
    texts = {}
    for path in _tracked_files():
        rel = path.relative_to(ROOT).as_posix()
        if path.suffix in SUFFIXES and not rel.startswith("tests/data/") and rel != THIS_FILE and path.is_file():
            texts[rel] = path.read_text(encoding="utf-8")
    return texts


def methods_ids(text: str) -> list[str]:
    return HEADING_ID.findall(text) + ROW_ID.findall(text)


def cited_ids(text: str) -> list[str]:
    """The METHODS.md ids a file cites: every § id, in files that mention METHODS.md."""
    return CITED_ID.findall(text) if "METHODS.md" in text else []


def spec_citations(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if SPEC_CITATION.search(line)]


@pytest.fixture(scope="module")
def texts() -> dict[str, str]:
    found = _text_files()
    assert "training/methods/iic.py" in found and "docs/METHODS.md" in found, "the file scan found nothing"
    return found


def test_no_file_cites_the_spec_outside_the_repository(texts):
    offenders = [f"{rel}: {line}" for rel, text in texts.items() for line in spec_citations(text)]
    assert not offenders, "cite docs/METHODS.md instead of the parity SPEC:\n" + "\n".join(offenders)


def test_every_cited_methods_id_exists(texts):
    ids = methods_ids(METHODS.read_text(encoding="utf-8"))
    duplicates = [i for i, n in collections.Counter(ids).items() if n > 1]
    assert not duplicates, f"docs/METHODS.md defines these ids twice: {duplicates}"
    cited = {(rel, i) for rel, text in texts.items() for i in cited_ids(text)}
    assert len(cited) > 50, f"only {len(cited)} METHODS.md citations found: the scan is broken"
    missing = sorted(f"{rel}: §{i}" for rel, i in cited if i not in set(ids))
    assert not missing, "cited but not in docs/METHODS.md:\n" + "\n".join(missing)


@pytest.mark.parametrize(("line", "flagged"), [
    ("See SPEC.md §1.1.", True),
    ("(SPEC A.6 / A11, secondary)", True),
    ("ours, not SPEC's", True),
    ("SPEC_ROWS = {", False),
    ("usseg_sdk.meta.InputSpec", False),
    ("the spec of the dataset", False),
])
def test_spec_citation_pattern(line, flagged):
    assert bool(spec_citations(line)) is flagged


def test_id_patterns():
    doc = "## 2. IIC\n### 2.2 Loss\n#### Quirk P11: grey\n| A5 | pairs |\n| id | x |\n"
    assert methods_ids(doc) == ["2", "2.2", "P11", "A5"]
    assert cited_ids("docs/METHODS.md §2.2 step 4, §3.3-§3.4, §P11.") == ["2.2", "3.3", "3.4", "P11"]
    assert cited_ids("§2.2 in a file that does not cite the methods page") == []
