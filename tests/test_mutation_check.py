"""The mutation check (testkit/mutation_check.py) stays usable: every mutation still applies to today's code
and names test files that exist, and the machinery kills a mutation its tests catch."""

from __future__ import annotations

import pytest
from conftest import REPO

from testkit import mutation_check


@pytest.mark.parametrize("mutation", mutation_check.MUTATIONS, ids=lambda m: m.name)
def test_every_mutation_applies_to_todays_code(mutation):
    source = (REPO / mutation.file).read_text()
    assert source.count(mutation.old) == 1, f"{mutation.name}: its snippet is no longer in {mutation.file} exactly once"
    assert mutation.new != mutation.old
    for test_file in mutation.tests:
        assert (REPO / "tests" / test_file).is_file(), f"{mutation.name}: no tests/{test_file}"


def test_names_are_unique():
    names = [m.name for m in mutation_check.MUTATIONS]
    assert len(names) == len(set(names))


def test_a_mutation_the_tests_catch_is_reported_killed_and_the_checkout_is_untouched():
    (mutation,) = [m for m in mutation_check.MUTATIONS if m.name == "edm-weight-in-loop"]
    before = (REPO / mutation.file).read_text()
    row = mutation_check.run(mutation, None, timeout=600)
    assert row["outcome"] == "killed", row
    assert "test_the_optimiser_steps_on_the_edm_weighted_loss" in row["detail"], row
    assert (REPO / mutation.file).read_text() == before
