"""The corpus: filters, exact deduplication, a by-file split fixed by paths alone."""

from __future__ import annotations

from pathlib import Path

from moeframe.training.corpus import Document, keep, normalise, read_sources, sample_by_hash, shipped_documents, split_by_file

CODE = "def f(x):\n    return x + 1\n" * 60


def test_duplicates_after_normalising_are_read_once(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text(CODE)
    (tmp_path / "b.py").write_text(CODE.replace("\n", "   \r\n"))
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "c.py").write_text(CODE + "# other\n")
    (tmp_path / "table.py").write_text(CODE + "X = [" + "1, " * 200 + "]\n")
    docs = read_sources([("lib", tmp_path)])
    assert [d.path for d in docs] == ["lib/a.py"]


def test_keep_refuses_tiny_and_non_ascii_text() -> None:
    assert keep(normalise(CODE))
    assert not keep("x = 1\n")
    assert not keep(normalise(CODE + "é" * 200))


def test_split_is_by_file_and_independent_of_the_document_order() -> None:
    docs = [Document(f"stdlib/m{i}.py", f"text {i}") for i in range(400)]
    train, held = split_by_file(docs, 0.1)
    assert not {d.path for d in train} & {d.path for d in held}
    assert 20 < len(held) < 60
    train_rev, held_rev = split_by_file(docs[::-1], 0.1)
    assert {d.path for d in held_rev} == {d.path for d in held}


def test_sample_by_hash_stays_under_the_budget() -> None:
    docs = [Document(f"stdlib/m{i}.py", "x" * (100 + i)) for i in range(100)]
    chosen = sample_by_hash(docs, 3000)
    assert sum(len(d.text) for d in chosen) <= 3000
    assert [d.path for d in chosen] == sorted(d.path for d in chosen)


def test_shipped_corpus_is_filtered_deduplicated_stdlib_source() -> None:
    docs = shipped_documents()
    assert len({d.text for d in docs}) == len(docs) > 100
    assert all(d.path.startswith("stdlib/") and keep(d.text) for d in docs)
