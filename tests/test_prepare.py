"""The whole data stage on tiny real files: clean, sentencepiece, binarize, manifest reuse."""

import json
import random
from pathlib import Path

import datasets
import pytest
import yaml
from omegaconf import OmegaConf

from transformer_mt.data.corpus import CorpusError
from transformer_mt.data.prepare import DataConfig, _Reservoir, load_prepared, prepare_data

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
