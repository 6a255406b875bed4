"""The node help pages and the README's node table are generated from the nodes' own definitions;
this fails when they are out of date (regenerate with `python -m tools.make_node_docs`)."""

from __future__ import annotations

from tools.make_node_docs import README, expected_files


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
