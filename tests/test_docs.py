"""The node help pages and the README's node table are generated from the nodes' own definitions;
this fails when they are out of date (regenerate with `python -m tools.make_node_docs`). And
bench/results/ holds exactly the results the documents cite: each file is cited by path in the README,
docs/*.md or the model card, and each cited path exists (git keeps the results no document cites).
"""

from __future__ import annotations

import re
import subprocess

from tools.make_node_docs import README, expected_files

REPO = README.parent
RESULTS = REPO / "bench" / "results"
CITATION = re.compile(r"bench/results/[\w./-]+")


def documents():
    return [README, *sorted((REPO / "docs").glob("*.md")), REPO / "motion_world" / "MODEL_CARD.md"]


def cited_results() -> dict[str, str]:
    """bench/results paths cited in the documents, each with the document that cites it first."""
    cited: dict[str, str] = {}
    for doc in documents():
        for match in CITATION.findall(doc.read_text()):
            cited.setdefault(match.rstrip("."), doc.relative_to(REPO).as_posix())
    return cited


def result_files() -> list[str]:
    """The files under bench/results: the tracked ones in a git checkout (a local bench run's output is not
    the repository's), else all of them."""
    try:
        listed = subprocess.run(["git", "ls-files", "bench/results"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        listed = []
    return listed or sorted(p.relative_to(REPO).as_posix() for p in RESULTS.rglob("*") if p.is_file())


def test_node_docs_and_readme_table_are_current(pack):
    expected = expected_files(pack.module.NODE_CLASS_MAPPINGS, pack.module.NODE_DISPLAY_NAME_MAPPINGS, README.read_text())
    stale = [str(path.name) for path, text in expected.items() if not path.exists() or path.read_text() != text]
    assert not stale, f"out of date: {stale}; run `python -m tools.make_node_docs` with COMFYUI_ROOT set"


def test_every_node_has_a_help_page_mentioning_every_input(pack):
    from tools.make_node_docs import DOCS

    for node_id, cls in pack.module.NODE_CLASS_MAPPINGS.items():
        page = (DOCS / f"{node_id}.md").read_text()
        for section in ("required", "optional"):
            for name in cls.INPUT_TYPES().get(section, {}):
                assert f"`{name}`" in page, f"{node_id}.md does not document {name}"


def test_every_result_file_is_cited_by_a_document():
    files = result_files()
    assert files, "no files under bench/results"
    uncited = [f for f in files if f not in cited_results()]
    assert not uncited, f"bench/results files no document cites by path (cite them, or git rm them): {uncited}"


def test_every_cited_result_exists():
    missing = [f"{path} (in {doc})" for path, doc in cited_results().items() if not (REPO / path).exists()]
    assert not missing, f"documents cite bench/results paths that do not exist: {missing}"
