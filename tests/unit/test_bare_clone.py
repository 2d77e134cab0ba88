"""The suite needs nothing beside the clone: its test data is inside, and opening a sibling fails."""

import os

import pytest

from tests.conftest import ROOT, beside_the_clone
from tests.e2e.conftest import SPEC_DIR


def test_the_openai_schemas_are_test_data_inside_the_repository() -> None:
    assert SPEC_DIR.resolve().is_relative_to(ROOT)
    for name in ("chat_schemas.json", "responses_schemas.json", "embeddings_schemas.json"):
        assert (SPEC_DIR / name).is_file(), name


def test_opening_a_file_beside_the_clone_is_refused() -> None:
    sibling = ROOT.parent / "shared" / "openai-spec" / "chat_schemas.json"
    if str(ROOT.parent) == os.sep:
        pytest.skip("a clone at the file system's root has nothing beside it")
    with pytest.raises(PermissionError, match="outside the repository"):
        open(sibling)
    relative = os.path.relpath(sibling)
    with pytest.raises(PermissionError, match="outside the repository"):
        open(relative)


def test_only_siblings_count() -> None:
    parent = str(ROOT.parent)
    assert not beside_the_clone(str(ROOT / "tests" / "data"))
    assert not beside_the_clone("/usr/lib/python3/os.py")
    if parent != os.sep:
        assert beside_the_clone(os.path.join(parent, "shared", "x.json"))
        assert not beside_the_clone(os.path.join(parent, ".cache", "pip"))
        assert beside_the_clone(str(ROOT) + "-other")
