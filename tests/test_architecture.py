"""The shape of the package: no import cycle, and modules small enough to read."""

from pathlib import Path

from tests.imports import find_cycles, graph, modules

# Modules allowed above MAX_LINES because each is one concept (docs/data.md, repo layout)
ONE_CONCEPT = {
    "boneage.cli": "the typed command line: one thin entry point per command",
    "boneage.dicom": "reading DICOM: header checks, pixel decoding, photometric handling",
    "boneage.cohort": "discovering a cohort: files, labels CSV, DICOM sex/age, rejects",
    "boneage.config": "the params schema: one validated model per params.yaml section",
}
MAX_LINES = 425


def test_no_import_cycle():
    assert find_cycles(graph()) == []


def test_find_cycles_finds_one():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(g) == [["a", "b", "c"]]


def test_modules_are_small_or_one_concept():
    too_long = {}
    for name, path in modules().items():
        n = len(Path(path).read_text().splitlines())
        if n > MAX_LINES and name not in ONE_CONCEPT:
            too_long[name] = n
    assert too_long == {}, f"split these along their seams (or justify in ONE_CONCEPT): {too_long}"
