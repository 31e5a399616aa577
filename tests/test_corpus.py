"""Reading parallel text (files and Hugging Face datasets) and cleaning the training split."""

import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transformer_mt.data import corpus
from transformer_mt.data.corpus import (
    CleaningStats,
    CorpusError,
    HFCorpus,
    TextCorpus,
    clean_pairs,
    count_lines,
    read_lines,
)


def write_pair(tmp_path: Path, name: str, src: bytes | str, tgt: bytes | str) -> Path:
    prefix = tmp_path / name
    for lang, text in (("en", src), ("de", tgt)):
        data = text.encode("utf-8") if isinstance(text, str) else text
        Path(f"{prefix}.{lang}").write_bytes(data)
    return prefix


def pairs_of(prefix: Path, split: str = "train") -> list[tuple[str, str]]:
    return list(TextCorpus({split: prefix}, "en", "de").pairs(split))


def test_cleaning_counts_each_reason_once_and_keeps_the_rest():
    pairs = [
        ("a small house", "ein kleines Haus"),  # kept
        ("", "leer"),  # empty source
        ("   ", "   "),  # empty both (normalised lines are stripped)
        ("one two three four five six", "eins zwei drei vier fünf sechs"),  # too long (max_len 5)
        ("bad\x00byte", "kaputt"),  # control character
        ("one", "eins zwei drei"),  # ratio 3 > 2
        ("yes", "ja"),  # kept
        ("x" * 50, "y"),  # too many characters (max_chars 40)
    ]
    stats = CleaningStats("train")
    kept = list(clean_pairs(iter(pairs), stats, max_len=5, min_len=1, max_len_ratio=2.0, max_chars=40))
    assert kept == [("a small house", "ein kleines Haus"), ("yes", "ja")]
    assert (stats.read, stats.kept, stats.empty, stats.control, stats.too_long, stats.ratio) == (
        8,
        2,
        2,
        1,
        2,
        1,
    )
    assert stats.summary() == (
        "train: 8 pairs read, 2 kept; dropped: 2 empty, 1 control characters, 2 too long, 1 ratio"
    )


def test_min_len_drops_short_pairs():
    stats = CleaningStats("train")
    kept = list(clean_pairs(iter([("a b", "c d"), ("a", "c d")]), stats, min_len=2))
    assert kept == [("a b", "c d")] and stats.too_short == 1
    assert stats.summary().endswith("dropped: 1 too short")


def test_nothing_dropped_is_said_plainly():
    stats = CleaningStats("train")
    list(clean_pairs(iter([("a", "b")]), stats))
    assert stats.summary() == "train: 1 pairs read, 1 kept; dropped: none"


def test_crlf_cr_and_bom_are_normalised(tmp_path):
    prefix = write_pair(tmp_path, "train", "\ufeffHello\r\nWorld  \r\n", "Hallo\rWelt\r")
    assert pairs_of(prefix) == [("Hello", "Hallo"), ("World", "Welt")]


def test_missing_final_newline_counts_the_last_line(tmp_path):
    prefix = write_pair(tmp_path, "train", "a\nb", "c\nd\n")
    assert pairs_of(prefix) == [("a", "c"), ("b", "d")]


def test_a_lone_cr_at_the_end_of_a_file_ends_the_last_line_like_an_lf(tmp_path):
    # Found by the fuzz test: b"\n\n\n\r" is four empty lines, as b"\n\n\n\n" is, and as the CR-only
    # b"a\rb\r" is two lines; the final CR is a line end, neither dropped with its line nor a fifth line.
    prefix = write_pair(tmp_path, "train", b"\n\n\n\n", b"\n\n\n\r")
    assert pairs_of(prefix) == [("", "")] * 4
    prefix = write_pair(tmp_path, "valid", b"a\r\nb\r", b"c\rd\r")
    assert pairs_of(prefix, "valid") == [("a", "c"), ("b", "d")]


@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 5])
def test_line_ends_are_found_across_read_chunks(tmp_path, monkeypatch, chunk_bytes):
    monkeypatch.setattr(corpus, "_CHUNK_BYTES", chunk_bytes)
    path = tmp_path / "x.txt"
    path.write_bytes(b"ab\r\rcde\rf\r")  # CR only: a CR at the end of a chunk or of the file is one line end
    assert list(read_lines(path)) == ["ab", "", "cde", "f"]
    path.write_bytes(b"ab\r\ncd\r\n\r\nef\r")  # CRLF split across chunks is one line end
    assert list(read_lines(path)) == ["ab", "cd", "", "ef"]
    path.write_bytes(b"ab\rcd\ref\ngh\n")  # the first LF comes chunks later: still an LF file, CR is text
    assert list(read_lines(path)) == ["ab cd ef", "gh"]


@pytest.mark.parametrize(
    ("data", "too_long"),
    [
        (b"abcd\r\nefgh\nijkl\r", None),  # CRLF, LF, final CR after a line of the maximum length
        (b"abcd\rijkl", None),
        (b"abcd\r\nefghi\r\n", 2),
        (b"abcd\nefghi", 2),
        (b"abcd\rabcd\refghi\r", 3),
    ],
)
def test_longest_line_is_measured_without_its_line_end(tmp_path, monkeypatch, data, too_long):
    monkeypatch.setattr(corpus, "MAX_LINE_BYTES", 4)
    monkeypatch.setattr(corpus, "_CHUNK_BYTES", 3)
    path = tmp_path / "x.txt"
    path.write_bytes(data)
    if too_long is None:
        assert all(len(line) == 4 for line in read_lines(path))
    else:
        with pytest.raises(CorpusError, match=rf"x\.txt:{too_long}: line longer than"):
            list(read_lines(path))


def test_line_separator_characters_inside_a_line_do_not_split_it(tmp_path):
    # str.splitlines() would break these lines in two, misaligning any reader of the text.
    prefix = write_pair(tmp_path, "test", "one\u2028two\x0cthree\rfour\n", "eins\n")
    assert pairs_of(prefix, "test") == [("one two three four", "eins")]


def test_invalid_utf8_names_the_file_and_line(tmp_path):
    prefix = write_pair(tmp_path, "train", b"fine\nstill fine\ncaf\xe9\n", b"a\nb\nc\n")
    with pytest.raises(CorpusError, match=r"train\.en:3: invalid UTF-8"):
        pairs_of(prefix)


@pytest.mark.parametrize("longer", ["en", "de"])
def test_misaligned_files_name_both_files_and_line_counts(tmp_path, longer):
    three, two = "a\nb\nc\n", "x\ny\n"
    prefix = write_pair(tmp_path, "train", *((three, two) if longer == "en" else (two, three)))
    counts = (3, 2) if longer == "en" else (2, 3)
    pattern = rf"train\.en has {counts[0]} lines but .*train\.de has {counts[1]}"
    with pytest.raises(CorpusError, match=pattern):
        pairs_of(prefix)


def test_empty_file_is_an_error_naming_it(tmp_path):
    prefix = write_pair(tmp_path, "valid", "a\n", "")
    with pytest.raises(CorpusError, match=r"valid\.de: file is empty"):
        pairs_of(prefix, "valid")


def test_missing_file_is_an_error_naming_it(tmp_path):
    (tmp_path / "train.en").write_text("a\n")
    with pytest.raises(CorpusError, match=r"train\.de: file not found"):
        pairs_of(tmp_path / "train")


def test_megabyte_line_streams_and_is_cleaned_as_too_long(tmp_path):
    huge = "word " * 200_000  # 1 MB, 200k tokens
    prefix = write_pair(tmp_path, "train", f"short\n{huge}\nlast\n", "kurz\nlang\nletzte\n")
    stats = CleaningStats("train")
    kept = list(clean_pairs(TextCorpus({"train": prefix}, "en", "de").pairs("train"), stats))
    assert kept == [("short", "kurz"), ("last", "letzte")]
    assert stats.too_long == 1


def test_control_characters_drop_the_pair_without_shifting_the_others(tmp_path):
    prefix = write_pair(tmp_path, "train", "a\nnul\x00here\nc\n", "A\nB\nC\n")
    stats = CleaningStats("train")
    kept = list(clean_pairs(TextCorpus({"train": prefix}, "en", "de").pairs("train"), stats))
    assert kept == [("a", "A"), ("c", "C")] and stats.control == 1


def test_read_lines_is_a_stream(tmp_path):
    path = tmp_path / "x.en"
    path.write_text("a\nb\n")
    lines = read_lines(path)
    assert next(lines) == "a" and list(lines) == ["b"]


def test_fingerprint_changes_with_the_content(tmp_path):
    prefix = write_pair(tmp_path, "train", "a\n", "b\n")
    corpus = TextCorpus({"train": prefix}, "en", "de")
    before = corpus.fingerprint()
    Path(f"{prefix}.de").write_text("c\n")
    assert corpus.fingerprint() != before and set(before) == {f"{prefix}.en", f"{prefix}.de"}


def translation_rows(n: int, offset: int = 0) -> dict:
    return {"translation": [{"de": f"Satz {i}", "en": f"sentence {i}"} for i in range(offset, offset + n)]}


def test_saved_dataset_dict_is_read_like_the_hub(tmp_path):
    splits = {"train": 5, "validation": 2, "test": 3}
    datasets.DatasetDict(
        {name: datasets.Dataset.from_dict(translation_rows(n)) for name, n in splits.items()}
    ).save_to_disk(str(tmp_path / "wmt"))
    corpus = HFCorpus("en", "de", path=str(tmp_path / "wmt"))
    assert list(corpus.pairs("train"))[4] == ("sentence 4", "Satz 4")
    assert [len(list(corpus.pairs(s))) for s in ("train", "valid", "test")] == [5, 2, 3]
    assert len(corpus.fingerprint()) == 3


def test_saved_dataset_per_split_folder_is_read(tmp_path):
    for name in ("train", "validation", "test"):
        datasets.Dataset.from_dict(translation_rows(2)).save_to_disk(str(tmp_path / name))
    corpus = HFCorpus("de", "en", path=str(tmp_path))
    assert list(corpus.pairs("valid")) == [("Satz 0", "sentence 0"), ("Satz 1", "sentence 1")]


def test_saved_dataset_with_other_languages_says_which(tmp_path):
    datasets.DatasetDict(
        {name: datasets.Dataset.from_dict(translation_rows(1)) for name in ("train", "validation", "test")}
    ).save_to_disk(str(tmp_path / "wmt"))
    with pytest.raises(CorpusError, match="no 'en' or 'fr' text"):
        list(HFCorpus("en", "fr", path=str(tmp_path / "wmt")).pairs("train"))


def test_a_single_saved_dataset_without_splits_says_how_to_save_it(tmp_path):
    datasets.Dataset.from_dict(translation_rows(2)).save_to_disk(str(tmp_path / "one"))
    with pytest.raises(CorpusError, match="single saved Dataset, without splits"):
        HFCorpus("en", "de", path=str(tmp_path / "one"))


def test_folder_without_a_saved_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(CorpusError, match="not a saved DatasetDict"):
        HFCorpus("en", "de", path=str(tmp_path))


def test_unreachable_hub_gives_one_line_naming_the_offline_alternatives(tmp_path):
    code = (
        "from transformer_mt.data.corpus import HFCorpus, CorpusError\n"
        "try:\n    HFCorpus('en', 'de', name='wmt14', config='de-en')\n"
        "except CorpusError as err:\n    print(err)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    message = result.stdout.strip()
    assert "\n" not in message
    assert "network" in message and "data.hf_path=DIR" in message and "data.source=files" in message


@settings(max_examples=300, deadline=None)
@given(data=st.text(alphabet="a\r\né ", max_size=30).map(str.encode), chunk=st.integers(1, 7))
def test_line_count_on_the_bytes_is_what_read_lines_yields(tmp_path_factory, data, chunk):
    path = tmp_path_factory.mktemp("lines") / "x.txt"
    path.write_bytes(data)
    if not data:
        return  # an empty file is an error either way
    original = corpus._CHUNK_BYTES
    corpus._CHUNK_BYTES = chunk
    try:
        assert count_lines(path) == sum(1 for _ in read_lines(path)), data
    finally:
        corpus._CHUNK_BYTES = original


def test_misaligned_split_is_found_by_counting_before_reading(tmp_path):
    corpus_files = TextCorpus(
        {"train": write_pair(tmp_path, "train", "a\nb\n", "c\nd\n"), "valid": write_pair(tmp_path, "valid", "a\nb\r", "c\n")},
        "en",
        "de",
    )
    with pytest.raises(CorpusError, match=r"valid\.en has 2 lines but .*valid\.de has 1"):
        corpus_files.check()
