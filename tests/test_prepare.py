"""The whole data stage on tiny real files: clean, sentencepiece, binarize, manifest reuse."""

import json
import random
import subprocess
import sys
import tracemalloc
from pathlib import Path

import datasets
import pytest
import sentencepiece as spm
import yaml
from omegaconf import OmegaConf

from tests.helpers import REPO, run_cli
from transformer_mt.data.corpus import CorpusError, HFCorpus
from transformer_mt.data.prepare import DataConfig, _Reservoir, load_prepared, prepare_data
from transformer_mt.data.vocab import train_vocabulary

CONFIG_DIR = Path(__file__).parents[1] / "transformer_mt" / "configs" / "data"
WORDS = {
    "the": "der",
    "small": "kleine",
    "dog": "Hund",
    "runs": "läuft",
    "fast": "schnell",
    "house": "Haus",
    "green": "grüne",
    "sees": "sieht",
    "cat": "Katze",
    "today": "heute",
}


def sentences(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    english = [" ".join(rng.choices(list(WORDS), k=rng.randint(2, 8))) for _ in range(n)]
    return english, [" ".join(WORDS[w] for w in line.split()) for line in english]


def write(prefix: Path, english: list[str], german: list[str]) -> str:
    Path(f"{prefix}.en").write_text("\n".join(english) + "\n", encoding="utf-8")
    Path(f"{prefix}.de").write_text("\n".join(german) + "\n", encoding="utf-8")
    return str(prefix)


@pytest.fixture
def corpus(tmp_path) -> DataConfig:
    en, de = sentences(300, seed=0)
    en[10], de[10] = "", "nur deutsch"  # empty source: dropped
    en[20] = " ".join(["dog"] * 30)  # too long for max_len=20
    valid_en, valid_de = sentences(12, seed=1)
    valid_en[3], valid_de[3] = "", ""  # kept: valid and test are never filtered
    test_en, test_de = sentences(9, seed=2)
    return DataConfig(
        source="files",
        train=write(tmp_path / "train", en, de),
        valid=write(tmp_path / "valid", valid_en, valid_de),
        test=write(tmp_path / "test", test_en, test_de),
        vocab_size=60,
        max_len=20,
        workers=1,
    )


def test_prepare_writes_every_split_and_the_references(corpus, tmp_path):
    logs: list[str] = []
    data = prepare_data(corpus, tmp_path / "run", log=logs.append)
    assert "train: 300 pairs read, 298 kept; dropped: 1 empty, 1 too long" in "\n".join(logs)
    assert len(data.dataset("train")) == 298
    assert [len(data.dataset(s)) for s in ("valid", "test")] == [12, 9]
    assert data.spm_path.is_file() and len(data.vocab) <= 60

    src, tgt = data.dataset("valid")[5]
    valid_en = Path(f"{corpus.valid}.en").read_text(encoding="utf-8").splitlines()
    valid_de = Path(f"{corpus.valid}.de").read_text(encoding="utf-8").splitlines()
    assert data.vocab.decode(src.tolist()) == valid_en[5] and data.vocab.decode(tgt.tolist()) == valid_de[5]
    assert data.dataset("valid")[3][0].tolist() == []  # the empty line stays, as an empty sequence

    src_txt, tgt_txt = data.text_paths("test")
    assert src_txt.read_text(encoding="utf-8") == Path(f"{corpus.test}.en").read_text(encoding="utf-8")
    assert (
        tgt_txt.read_text(encoding="utf-8").splitlines() == Path(f"{corpus.test}.de").read_text().splitlines()
    )
    assert data.text_paths("valid")[0].read_text(encoding="utf-8").splitlines() == valid_en

    manifest = json.loads((tmp_path / "run" / "data" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["pairs"] == 298 and manifest["cleaning"]["too_long"] == 1
    assert manifest["vocab_sha256"] and manifest["config_sha256"] and len(manifest["key"]["inputs"]) == 6
    stages = {"hash", "check", "clean", "vocab", "encode", "encode_read", "encode_sentencepiece", "encode_write"}
    assert stages | {"total"} == set(manifest["seconds"])
    assert sum(manifest["seconds"][s] for s in ("encode_read", "encode_sentencepiece", "encode_write")) <= (
        manifest["seconds"]["encode"]
    )


def test_megabyte_test_line_is_kept_and_encoded(corpus, tmp_path):
    huge = "the small dog " * 75_000  # about 1 MB on one line
    english = Path(f"{corpus.test}.en").read_text(encoding="utf-8").splitlines()
    german = Path(f"{corpus.test}.de").read_text(encoding="utf-8").splitlines()
    corpus.test = write(tmp_path / "long", [*english, huge], [*german, "der kleine Hund"])
    data = prepare_data(corpus, tmp_path / "run", log=lambda _: None)
    assert len(data.dataset("test")) == 10 and data.dataset("test").src_sizes[-1] >= 75_000
    assert data.text_paths("test")[0].read_text(encoding="utf-8").splitlines()[-1] == huge.strip()


def test_training_pairs_round_trip_through_the_vocabulary(corpus, tmp_path):
    data = prepare_data(corpus, tmp_path / "run", log=lambda _: None)
    train = data.dataset("train")
    english = Path(f"{corpus.train}.en").read_text(encoding="utf-8").splitlines()
    assert data.vocab.decode(train[0][0].tolist()) == english[0]
    batch = train.batch([0, 1, 2])
    assert batch.src_tokens.shape[0] == 3 and batch.ntokens == int(train.tgt_sizes[:3].sum()) + 3


def test_bpe_dropout_encodes_train_as_sampled_copies_of_the_same_text(corpus, tmp_path):
    plain = prepare_data(corpus, tmp_path / "plain", log=lambda _: None)
    corpus.bpe_dropout, corpus.bpe_dropout_copies = 0.2, 3
    logs: list[str] = []
    data = prepare_data(corpus, tmp_path / "run", log=logs.append)
    assert "train is 3 copies of its 298 pairs, each segmented with BPE-dropout 0.2" in "\n".join(logs)
    train, deterministic = data.dataset("train"), plain.dataset("train")
    assert len(train) == 3 * 298
    english = Path(f"{corpus.train}.en").read_text(encoding="utf-8").splitlines()
    resegmented = 0
    for copy in range(3):
        for i in range(298):
            src, tgt = train[copy * 298 + i]
            plain_src, plain_tgt = deterministic[i]
            assert data.vocab.decode(src.tolist()) == plain.vocab.decode(plain_src.tolist())
            assert data.vocab.decode(tgt.tolist()) == plain.vocab.decode(plain_tgt.tolist())
            resegmented += src.tolist() != plain_src.tolist()
            assert len(src) >= len(plain_src)  # dropped merges only ever split pieces further
    assert data.vocab.decode(train[0][0].tolist()) == english[0]
    assert resegmented > 298  # most sentences are cut another way in some copy
    assert train[0][0].tolist() != train[298][0].tolist() or train[1][0].tolist() != train[299][0].tolist()
    # Valid and test are what decoding sees: the one deterministic segmentation.
    for split in ("valid", "test"):
        assert [x.tolist() for x in data.dataset(split)[0]] == [x.tolist() for x in plain.dataset(split)[0]]
    assert data.manifest["key"]["config"]["bpe_dropout"] == 0.2
    assert "bpe_dropout" not in plain.manifest["key"]["config"]  # off: data prepared before the option matches


def test_bpe_dropout_is_repeatable_and_follows_the_seed(corpus, tmp_path):
    corpus.bpe_dropout, corpus.bpe_dropout_copies = 0.3, 2
    runs = [prepare_data(corpus, tmp_path / "a", log=lambda _: None)]
    corpus.workers = 2  # sampling runs on one thread whatever the workers, so the ids are the same
    runs.append(prepare_data(corpus, tmp_path / "b", log=lambda _: None))
    corpus.seed = 2
    runs.append(prepare_data(corpus, tmp_path / "c", log=lambda _: None))

    def ids(data, split):
        pairs = data.dataset(split)
        return [[side.tolist() for side in pairs[i]] for i in range(len(pairs))]

    assert ids(runs[0], "train") == ids(runs[1], "train")
    assert ids(runs[0], "train") != ids(runs[2], "train")
    assert ids(runs[0], "valid") == ids(runs[2], "valid")  # the same vocabulary: the seed moved the sampling


@pytest.mark.parametrize("field, value", [("bpe_dropout", 1.0), ("bpe_dropout", -0.1), ("bpe_dropout_copies", 0)])
def test_bpe_dropout_out_of_range_is_refused(field, value):
    with pytest.raises(ValueError, match=f"data.{field}"):
        DataConfig(**{field: value})


def test_second_call_only_loads(corpus, tmp_path):
    prepare_data(corpus, tmp_path / "run", log=lambda _: None)
    binary = tmp_path / "run" / "data" / "train.en.bin"
    written = binary.stat().st_mtime_ns
    logs: list[str] = []
    data = prepare_data(corpus, tmp_path / "run", log=logs.append)
    assert logs == [
        f"data: {tmp_path / 'run' / 'data'} already prepared from these inputs and settings; loading it"
    ]
    assert binary.stat().st_mtime_ns == written and len(data.dataset("train")) == 298


def test_changed_input_rebuilds(corpus, tmp_path):
    prepare_data(corpus, tmp_path / "run", log=lambda _: None)
    with open(f"{corpus.train}.en", "a", encoding="utf-8") as f, open(f"{corpus.train}.de", "a") as g:
        f.write("the cat\n")
        g.write("der Katze\n")
    logs: list[str] = []
    data = prepare_data(corpus, tmp_path / "run", log=logs.append)
    assert "preparing again" in logs[0] and len(data.dataset("train")) == 299


def test_changed_config_rebuilds(corpus, tmp_path):
    prepare_data(corpus, tmp_path / "run", log=lambda _: None)
    corpus.max_len = 5
    data = prepare_data(corpus, tmp_path / "run", log=lambda _: None)
    assert data.manifest["cleaning"]["too_long"] > 1
    assert len(data.dataset("train")) == data.manifest["cleaning"]["kept"]


def test_interrupted_prepare_is_stale(corpus, tmp_path):
    prepare_data(corpus, tmp_path / "run", log=lambda _: None)
    (tmp_path / "run" / "data" / "manifest.json").unlink()  # as if killed before the manifest
    with pytest.raises(FileNotFoundError, match="no prepared data"):
        load_prepared(tmp_path / "run")
    logs: list[str] = []
    prepare_data(corpus, tmp_path / "run", log=logs.append)
    assert not any("already prepared" in line for line in logs)
    assert load_prepared(tmp_path / "run").manifest["splits"]["test"]["pairs"] == 9


def test_load_prepared_accepts_the_run_or_the_data_folder(corpus, tmp_path):
    prepare_data(corpus, tmp_path / "run", log=lambda _: None)
    for folder in (tmp_path / "run", tmp_path / "run" / "data"):
        data = load_prepared(folder)
        assert (data.src_lang, data.tgt_lang) == ("en", "de") and len(data.dataset("test")) == 9


def test_saved_hugging_face_dataset_prepares_like_files(tmp_path):
    def split(n: int, seed: int) -> datasets.Dataset:
        en, de = sentences(n, seed)
        return datasets.Dataset.from_dict(
            {"translation": [{"de": d, "en": e} for e, d in zip(en, de, strict=True)]}
        )

    datasets.DatasetDict(
        {"train": split(200, 0), "validation": split(7, 1), "test": split(5, 2)}
    ).save_to_disk(str(tmp_path / "saved"))
    cfg = DataConfig(source="hf", hf_path=str(tmp_path / "saved"), vocab_size=60, workers=1)
    data = prepare_data(cfg, tmp_path / "run", log=lambda _: None)
    assert [len(data.dataset(s)) for s in ("train", "valid", "test")] == [200, 7, 5]
    assert data.text_paths("test")[1].read_text(encoding="utf-8").splitlines() == sentences(5, 2)[1]
    assert prepare_data(cfg, tmp_path / "run", log=lambda _: None).manifest == data.manifest


def test_a_handful_of_sampled_lines_still_trains_a_vocabulary(corpus, tmp_path):
    corpus.spm_train_lines = 40
    logs: list[str] = []
    data = prepare_data(corpus, tmp_path / "run", log=logs.append)
    assert any("on 40 lines" in line for line in logs) and len(data.dataset("train")) == 298


def test_reservoir_is_bounded_uniform_and_seeded():
    counts = [0] * 10
    for seed in range(2000):
        reservoir = _Reservoir(3, seed)
        for item in range(10):
            reservoir.add(item)
        assert len(reservoir.items) == 3 and len(set(reservoir.items)) == 3
        for item in reservoir.items:
            counts[item] += 1
    assert all(500 < c < 700 for c in counts)  # each item is kept with probability 3/10


def test_missing_input_file_is_named_before_any_work(corpus, tmp_path):
    Path(f"{corpus.valid}.de").unlink()
    with pytest.raises(CorpusError, match=r"valid\.de: file not found"):
        prepare_data(corpus, tmp_path / "run", log=lambda _: None)
    assert not (tmp_path / "run" / "data" / "spm.model").exists()


def test_files_source_without_prefixes_is_refused():
    with pytest.raises(ValueError, match="data.source=files needs data.train/valid/test"):
        DataConfig(source="files")
    with pytest.raises(ValueError, match="expected sample, files or hf"):
        DataConfig(source="wmt")


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_data_preset_fits_the_schema(path):
    preset = yaml.safe_load(path.read_text())
    assert preset.pop("defaults") == ["data_schema", "_self_"]
    merged = OmegaConf.merge(OmegaConf.structured(DataConfig), preset)
    if merged.source != "files" or merged.train is not None:
        OmegaConf.to_object(merged)  # runs DataConfig's checks


def test_sample_source_prepares(tmp_path):
    sample = pytest.importorskip("transformer_mt.data.sample")
    if not hasattr(sample, "write_sample"):
        pytest.skip("transformer_mt.data.sample.write_sample not written yet")
    cfg = OmegaConf.to_object(
        OmegaConf.merge(OmegaConf.structured(DataConfig), _preset("sample"), {"workers": 1})
    )
    data = prepare_data(cfg, tmp_path / "run", log=lambda _: None)
    assert all(len(data.dataset(s)) > 0 for s in ("train", "valid", "test"))
    assert data.manifest["cleaning"]["read"] == len(data.dataset("train")) + sum(
        v for k, v in data.manifest["cleaning"].items() if k not in ("split", "read", "kept")
    )
    logs: list[str] = []
    prepare_data(cfg, tmp_path / "run", log=logs.append)
    assert len(logs) == 1 and "already prepared" in logs[0]  # loaded without generating the sample again


def _preset(name: str) -> dict:
    preset = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
    del preset["defaults"]
    return preset


def test_moses_tokenized_train_is_detokenized(tmp_path):
    english = ["the dog &apos;s ball , he said .", "&quot; today &quot; is green ( small ) !"] * 40
    german = ["der Ball des Hundes , sagte er .", "&quot; heute &quot; ist grün ( klein ) !"] * 40
    prefix = write(tmp_path / "train", english, german)
    cfg = DataConfig(
        source="files",
        train=prefix,
        valid=prefix,
        test=prefix,
        vocab_size=60,
        workers=1,
        detokenize_train="moses",
    )
    data = prepare_data(cfg, tmp_path / "run", log=lambda _: None)
    train = data.dataset("train")
    assert data.vocab.decode(train[0][0].tolist()) == "the dog's ball, he said."
    assert data.vocab.decode(train[1][1].tolist()) == '"heute" ist grün (klein)!'
    # valid and test are read as they are
    assert Path(data.text_paths("valid")[0]).read_text(encoding="utf-8").splitlines()[0] == english[0]


def test_unknown_detokenizer_is_refused():
    with pytest.raises(ValueError, match="detokenize_train"):
        DataConfig(detokenize_train="spacy")


# ----------------------------------------------------------------------------- issue 16, cases 10-12


def test_misaligned_valid_is_reported_before_train_is_cleaned(corpus, tmp_path):
    with open(f"{corpus.valid}.en", "a", encoding="utf-8") as f:
        f.write("one line more\n")
    logs: list[str] = []
    with pytest.raises(CorpusError, match=r"valid\.en has 13 lines but .*valid\.de has 12"):
        prepare_data(corpus, tmp_path / "run", log=logs.append)
    assert not any("pairs read" in line for line in logs), logs  # train was not read, let alone cleaned
    assert not (tmp_path / "run" / "data" / "spm.model").exists()


def test_vocabulary_smaller_than_asked_says_what_was_asked_and_made(corpus, tmp_path):
    corpus.vocab_size = 100_000
    logs: list[str] = []
    data = prepare_data(corpus, tmp_path / "run", log=logs.append)
    assert len(data.vocab) < 1000
    said = [line for line in logs if "asked for" in line]
    assert said == [
        f"data: the vocabulary has {len(data.vocab)} pieces, not the 100000 asked for (data.vocab_size): that is "
        f"all that sentencepiece BPE makes of these 596 lines; set data.vocab_size={len(data.vocab)} or less "
        "to make this explicit"
    ]
    corpus.vocab_size, logs = len(data.vocab), []
    prepare_data(corpus, tmp_path / "again", log=logs.append)
    assert not any("asked for" in line for line in logs)  # made what was asked: nothing to say


def _prepare_with_file_size_limit(tmp_path, limit: int, corpus: Path) -> tuple[int, str]:
    """`transformer-mt prepare` in a process that may write no file beyond `limit` bytes: a real write
    error from the kernel (EFBIG, as a full disk gives ENOSPC), with SIGXFSZ ignored as a shell can."""
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
        "from transformer_mt.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    args = ["data=files", f"data.train={corpus}", f"data.valid={corpus}", f"data.test={corpus}", "data.vocab_size=60"]
    result = subprocess.run(
        [sys.executable, "-c", code, "prepare", *args, f"output_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    return result.returncode, result.stderr


def test_a_full_disk_names_the_file_it_could_not_write(tmp_path):
    english, german = sentences(4000, seed=3)
    english = [" ".join([line] * 8) for line in english]  # about 40 words a line: train.en.bin near 300 KB
    german = [" ".join([line] * 8) for line in german]
    prefix = Path(write(tmp_path / "big", english, german))
    # The sentencepiece model (about 250 KB) fits in 280 KB, the first array does not.
    code, stderr = _prepare_with_file_size_limit(tmp_path, 280_000, prefix)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1, stderr
    assert "File too large" in lines[0] and str(tmp_path / "run" / "data" / "train.en.bin") in lines[0], stderr
    # Below the model's size: sentencepiece writes it cut short without saying so; we do, naming it.
    code, stderr = _prepare_with_file_size_limit(tmp_path, 100_000, prefix)
    assert code == 2 and str(tmp_path / "run" / "data" / "spm.model") in stderr, stderr
    assert "unreadable model" in stderr and "Traceback" not in stderr


# ----------------------------------------------------------------------------- data.root (issue 16)


def _fake_multi30k(root: Path) -> None:
    (root / "multi30k").mkdir(parents=True)
    for split, n in (("train", 200), ("valid", 10), ("test", 10)):
        write(root / "multi30k" / split, *sentences(n, seed=len(split)))


def test_corpus_presets_find_their_files_under_the_data_root_from_anywhere(tmp_path):
    _fake_multi30k(tmp_path / "corpora")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"TRANSFORMER_MT_DATA": str(tmp_path / "corpora")}
    args = ("prepare", "data=multi30k_en_de", "data.vocab_size=60", "data.workers=1", "output_dir=run")
    result = run_cli(*args, env=env, cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((elsewhere / "run" / "data" / "manifest.json").read_text())
    assert sorted(manifest["key"]["inputs"])[0] == str(tmp_path / "corpora" / "multi30k" / "test.de")
    explicit = run_cli(*args[:-1], f"data.root={tmp_path / 'corpora'}", "output_dir=run2", cwd=elsewhere,
                       env={"TRANSFORMER_MT_DATA": str(tmp_path / "nowhere")})
    assert explicit.returncode == 0, explicit.stderr


def test_missing_corpus_names_every_file_the_data_root_and_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("TRANSFORMER_MT_DATA", raising=False)
    result = run_cli("prepare", "data=multi30k_en_de", "output_dir=run", cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    for split in ("train", "valid", "test"):
        assert f"../shared/data/multi30k/{split}.en" in line and f"../shared/data/multi30k/{split}.de" in line
    assert f"relative paths from {tmp_path}" in line and "TRANSFORMER_MT_DATA is not set" in line
    assert "TRANSFORMER_MT_DATA=DIR or data.root=DIR" in line and "github.com/multi30k/dataset" in line


# ----------------------------------------------------------------------------- data.spm_model


def _corpus_lines(corpus: DataConfig) -> list[str]:
    return [
        line
        for lang in ("en", "de")
        for line in Path(f"{corpus.train}.{lang}").read_text(encoding="utf-8").splitlines()
        if line
    ]


def test_a_given_sentencepiece_model_with_our_ids_is_used_as_it_is(corpus, tmp_path):
    given = train_vocabulary(_corpus_lines(corpus), tmp_path / "mine" / "spm", vocab_size=50, num_threads=1)
    corpus.spm_model, corpus.vocab_size = str(tmp_path / "mine" / "spm.model"), 8000  # vocab_size: not used
    logs: list[str] = []
    data = prepare_data(corpus, tmp_path / "run", log=logs.append)
    assert data.spm_path.read_bytes() == given.to_bytes() and len(data.vocab) == len(given)
    assert any("as it is" in line for line in logs) and not any("training a" in line for line in logs)
    english = Path(f"{corpus.train}.en").read_text(encoding="utf-8").splitlines()
    assert data.vocab.decode(data.dataset("train")[0][0].tolist()) == english[0]
    assert data.manifest["key"]["inputs"]["data.spm_model"]

    corpus.vocab_size = 60  # irrelevant with a given model: loaded, not prepared again
    assert "already prepared" in _first_log(corpus, tmp_path / "run")
    train_vocabulary(_corpus_lines(corpus)[:100], tmp_path / "mine" / "spm", vocab_size=40, num_threads=1)
    assert "preparing again" in _first_log(corpus, tmp_path / "run")  # another model in the same file


def _first_log(corpus: DataConfig, output_dir: Path) -> str:
    logs: list[str] = []
    prepare_data(corpus, output_dir, log=logs.append)
    return logs[0]


def test_a_given_sentencepiece_model_with_other_ids_gets_ours_and_segments_as_before(corpus, tmp_path):
    # sentencepiece's default layout (unk 0, bos 1, eos 2, no pad), as many pretrained systems ship it
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus_lines(corpus)), model_prefix=str(tmp_path / "theirs"),
        vocab_size=50, model_type="unigram", minloglevel=2,
    )
    theirs = spm.SentencePieceProcessor(model_file=str(tmp_path / "theirs.model"))
    assert (theirs.pad_id(), theirs.unk_id(), theirs.bos_id(), theirs.eos_id()) == (-1, 0, 1, 2)
    corpus.spm_model = str(tmp_path / "theirs.model")
    logs: list[str] = []
    data = prepare_data(corpus, tmp_path / "run", log=logs.append)
    assert any("has special ids pad -1, unk 0, bos 1, eos 2" in line for line in logs), logs
    ours = spm.SentencePieceProcessor(model_file=str(data.spm_path))
    assert (ours.pad_id(), ours.unk_id(), ours.bos_id(), ours.eos_id()) == (0, 1, 2, 3)
    assert len(data.vocab) == len(theirs) + 1  # a pad piece added
    for line in _corpus_lines(corpus)[:50] + ["the small XYZ dog"]:
        assert data.vocab.pieces(line) == theirs.encode(line, out_type=str)
    english = Path(f"{corpus.train}.en").read_text(encoding="utf-8").splitlines()
    assert data.vocab.decode(data.dataset("train")[0][0].tolist()) == english[0]


def test_a_given_model_is_adopted_without_protobuf_installed(corpus, tmp_path):
    # sentencepiece's generated sentencepiece_model_pb2 refuses every protobuf runtime but its own
    # (7.36 for sentencepiece 0.2.1): the package, and adopting a model, must not need it.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus_lines(corpus)), model_prefix=str(tmp_path / "theirs"),
        vocab_size=50, model_type="bpe", pad_id=3, unk_id=0, bos_id=1, eos_id=2, minloglevel=2,
    )
    script = (
        "import sys; sys.modules['google.protobuf'] = None\n"  # `import google.protobuf` now fails
        "from transformer_mt.data.vocab import adopt_vocabulary\n"
        f"vocab, note = adopt_vocabulary({str(tmp_path / 'theirs.model')!r}, {str(tmp_path / 'ours')!r})\n"
        "print(note)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "has special ids pad 3, unk 0, bos 1, eos 2" in done.stdout
    theirs = spm.SentencePieceProcessor(model_file=str(tmp_path / "theirs.model"))
    ours = spm.SentencePieceProcessor(model_file=str(tmp_path / "ours.model"))
    assert (ours.pad_id(), ours.unk_id(), ours.bos_id(), ours.eos_id()) == (0, 1, 2, 3)
    assert ours.get_piece_size() == theirs.get_piece_size()  # every special piece was there: none added
    assert [ours.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
    for line in _corpus_lines(corpus)[:50]:
        assert ours.encode(line, out_type=str) == theirs.encode(line, out_type=str)


def test_a_file_that_is_not_a_sentencepiece_model_is_one_clear_error(corpus, tmp_path):
    (tmp_path / "spm.vocab").write_text("<unk>\t0\n▁the\t-1\n")
    corpus.spm_model = str(tmp_path / "spm.vocab")
    with pytest.raises(ValueError, match=r"spm\.vocab: not a sentencepiece model .* give the \.model file"):
        prepare_data(corpus, tmp_path / "run", log=lambda _: None)
    corpus.spm_model = str(tmp_path / "absent.model")
    with pytest.raises(FileNotFoundError, match=r"data\.spm_model=.*absent\.model: file not found"):
        prepare_data(corpus, tmp_path / "run", log=lambda _: None)


# ----------------------------------------------------------------------------- the wmt14 schema at scale

WMT14_FEATURES = datasets.Features({"translation": datasets.Translation(languages=["de", "en"])})


def _wmt14_split(n: int, seed: int) -> datasets.Dataset:
    """Rows as the hub's wmt14/de-en has them: {"translation": {"de": ..., "en": ...}}."""
    rng = random.Random(seed)
    words = list(WORDS)
    english = [" ".join(rng.choices(words, k=rng.randint(2, 12))) + f" {i}" for i in range(n)]
    rows = [{"de": " ".join(WORDS.get(w, w) for w in line.split()), "en": line} for line in english]
    return datasets.Dataset.from_dict({"translation": rows}, features=WMT14_FEATURES)


@pytest.fixture(scope="module")
def saved_wmt14(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("wmt14") / "de-en"
    splits = {"train": _wmt14_split(200_000, 0), "validation": _wmt14_split(300, 1), "test": _wmt14_split(300, 2)}
    datasets.DatasetDict(splits).save_to_disk(str(path), max_shard_size="2MB")  # several Arrow files
    assert len(list((path / "train").glob("*.arrow"))) > 1
    return path


def test_wmt14_schema_streams_200k_pairs_without_holding_the_split_in_python(saved_wmt14):
    corpus = HFCorpus("en", "de", path=str(saved_wmt14))
    tracemalloc.start()
    count, first, last = 0, None, None
    for pair in corpus.pairs("train"):
        first = first or pair
        count, last = count + 1, pair
    streamed = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    held = list(corpus.pairs("train"))  # what materializing the split in Python lists costs
    materialized = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == len(held) == 200_000 and first == held[0] and last == held[-1]
    assert first[0].endswith(" 0") and last[0].endswith(" 199999") and first[1].split()[0] in WORDS.values()
    assert streamed < materialized / 5, (streamed, materialized)


def test_wmt14_schema_prepares_at_200k_pairs(saved_wmt14, tmp_path):
    cfg = DataConfig(source="hf", hf_path=str(saved_wmt14), vocab_size=80, spm_train_lines=4000, workers=2,
                     max_len_ratio=1.5)
    data = prepare_data(cfg, tmp_path / "run", log=lambda _: None)
    assert len(data.dataset("train")) == data.manifest["cleaning"]["kept"] > 150_000
    assert [len(data.dataset(s)) for s in ("valid", "test")] == [300, 300]
    reference = data.text_paths("test")[1].read_text(encoding="utf-8").splitlines()
    assert reference[7] == _wmt14_split(300, 2)[7]["translation"]["de"]


def test_wmt14_schema_with_other_languages_is_refused_before_train_is_read(saved_wmt14):
    corpus = HFCorpus("en", "fr", path=str(saved_wmt14))
    with pytest.raises(CorpusError, match=r"no 'en' or 'fr' text \(its translations are in \['de', 'en'\]\)"):
        corpus.check()
