"""The suite's own layout: pytest imports test files by basename (no packages under tests/), so
two test files with one name in different folders break collection of the whole suite
("import file mismatch"), which running one folder alone does not show."""

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent


def test_test_file_basenames_are_unique() -> None:
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert not [name for name, count in names.items() if count > 1]
