"""The embedded sample corpus: its grammar, determinism and splits."""

import random
import re

import pytest

from transformer_mt.data.sample import (
    GAP,
    NP,
    PP,
    Clause,
    _sample_sentence,
    generate_pairs,
    render,
    write_sample,
)

FILES = [f"{split}.{lang}" for split in ("train", "valid", "test") for lang in ("en", "de")]

KNOWN_PAIRS = [
    # Gender and case agreement of articles and adjectives (weak endings after "der").
    (
        Clause(NP("dog", adjs=("small",)), "see", obj=NP("man", adjs=("old",))),
        "The small dog sees the old man.",
        "Der kleine Hund sieht den alten Mann.",
    ),
    (
        Clause(NP(pron="she"), "find", obj=NP("cat", adjs=("small",))),
        "She finds the small cat.",
        "Sie findet die kleine Katze.",
    ),
    (
        Clause(NP("boy", "every"), "visit", obj=NP("house", "this", adjs=("old",)), tense="future"),
        "Every boy will visit this old house.",
        "Jeder Junge wird dieses alte Haus besuchen.",
    ),
    # Mixed endings after "ein", dative before accusative, the same German for both English orders.
    (
        Clause(NP("woman"), "give", obj=NP("book", "a", adjs=("new",)), dat=NP("child", adjs=("small",))),
        "The woman gives the small child a new book.",
        "Die Frau gibt dem kleinen Kind ein neues Buch.",
    ),
    (
        Clause(NP("woman"), "give", obj=NP("book", "a", adjs=("new",)), dat=NP("child"), to_form=True),
        "The woman gives a new book to the child.",
        "Die Frau gibt dem Kind ein neues Buch.",
    ),
    # Strong endings without a determiner or after a number; weak nouns; dative plural -n.
    (
        Clause(NP("man", "two", True, ("old",)), "eat", obj=NP("apple", "", True, ("red",))),
        "Two old men eat red apples.",
        "Zwei alte Männer essen rote Äpfel.",
    ),
    (Clause(NP("man"), "see", obj=NP("boy")), "The man sees the boy.", "Der Mann sieht den Jungen."),
    (
        Clause(NP("man"), "help", dat=NP("child", plural=True)),
        "The man helps the children.",
        "Der Mann hilft den Kindern.",
    ),
    # Verb second after a fronted adverbial or place.
    (
        Clause(NP("man"), "see", obj=NP("dog"), time="today", front="time"),
        "Today the man sees the dog.",
        "Heute sieht der Mann den Hund.",
    ),
    (
        Clause(NP("child"), "play", time="tomorrow", place=PP("in", NP("garden")), front="place"),
        "In the garden the child plays tomorrow.",
        "Im Garten spielt das Kind morgen.",
    ),
    # Verb final in subordinate clauses, with the German comma.
    (
        Clause(NP("woman"), "sleep", sub=("because", Clause(NP("man"), "see", obj=NP("dog")))),
        "The woman sleeps because the man sees the dog.",
        "Die Frau schläft, weil der Mann den Hund sieht.",
    ),
    (
        Clause(
            NP("woman"),
            "say",
            sub=("that", Clause(NP(pron="he"), "invite", obj=NP(pron="she"), tense="past")),
        ),
        "The woman says that he invited her.",
        "Die Frau sagt, dass er sie eingeladen hat.",
    ),
    # A fronted subordinate clause takes the first place: the main verb comes right after it.
    (
        Clause(
            NP("dog"),
            "bark",
            front="sub",
            sub=("when", Clause(NP("cat"), "come", place=PP("into", NP("garden")))),
        ),
        "When the cat comes into the garden, the dog barks.",
        "Wenn die Katze in den Garten kommt, bellt der Hund.",
    ),
    # The right bracket: participle (with haben or sein), infinitive, separable prefix.
    (
        Clause(NP("man"), "see", obj=NP("dog"), tense="past"),
        "The man saw the dog.",
        "Der Mann hat den Hund gesehen.",
    ),
    (
        Clause(NP("child"), "go", tense="past", place=PP("to", NP("school"))),
        "The child went to the school.",
        "Das Kind ist zur Schule gegangen.",
    ),
    (Clause(NP(pron="I"), "call", obj=NP("friend", "my")), "I call my friend.", "Ich rufe meinen Freund an."),
    (
        Clause(NP("dog"), "sleep", sub=("while", Clause(NP(pron="I"), "call", obj=NP("friend", "my")))),
        "The dog sleeps while I call my friend.",
        "Der Hund schläft, während ich meinen Freund anrufe.",
    ),
    # Negation: "nicht" before the right bracket, "not a" -> "kein".
    (
        Clause(NP("boy"), "help", dat=NP("man"), neg=True, tense="future"),
        "The boy will not help the man.",
        "Der Junge wird dem Mann nicht helfen.",
    ),
    (
        Clause(NP(pron="he"), "have", obj=NP("dog", "a"), neg=True),
        "He does not have a dog.",
        "Er hat keinen Hund.",
    ),
    # Relative clauses: the pronoun agrees with its antecedent; an object's clause moves past the verb.
    (
        Clause(NP("dog", rel=Clause(GAP, "bark")), "see", obj=NP("cat")),
        "The dog that barks sees the cat.",
        "Der Hund, der bellt, sieht die Katze.",
    ),
    (
        Clause(NP("man"), "see", obj=NP("dog", rel=Clause(NP("child"), "love", obj=GAP)), tense="past"),
        "The man saw the dog that the child loves.",
        "Der Mann hat den Hund gesehen, den das Kind liebt.",
    ),
    (
        Clause(NP("woman", plural=True, rel=Clause(NP("dog"), "follow", dat=GAP)), "laugh"),
        "The women who the dog follows laugh.",
        "Die Frauen, denen der Hund folgt, lachen.",
    ),
    # Questions put the finite verb first; the copula, in the preterite for the past.
    (
        Clause(NP(pron="you"), "see", obj=NP("bird", "this"), tense="can", question=True),
        "Can you see this bird?",
        "Kannst du diesen Vogel sehen?",
    ),
    (
        Clause(NP("cat", "a", adjs=("black",)), "be", comp=PP("under", NP("table"))),
        "A black cat is under the table.",
        "Eine schwarze Katze ist unter dem Tisch.",
    ),
    (Clause(NP(pron="we"), "be", comp="tired", tense="past"), "We were tired.", "Wir waren müde."),
]


@pytest.mark.parametrize(("clause", "english", "german"), KNOWN_PAIRS, ids=[en for _, en, _ in KNOWN_PAIRS])
def test_known_sentences_render_with_agreement_and_word_order(clause, english, german):
    assert render(clause) == (english, german)


def test_generate_pairs_is_deterministic_and_distinct():
    pairs = generate_pairs(300, seed=3)
    assert pairs == generate_pairs(300, seed=3)
    assert pairs != generate_pairs(300, seed=4)
    assert len(pairs) == 300
    assert len({en for en, _ in pairs}) == 300


def test_german_is_a_function_of_the_english():
    rng, seen = random.Random(0), {}
    for _ in range(5000):
        en, de = render(_sample_sentence(rng))
        assert seen.setdefault(en, de) == de, f"{en!r} has two translations: {seen[en]!r} and {de!r}"


def test_sentences_are_clean_cased_and_punctuated():
    for en, de in generate_pairs(2000, seed=5):
        for text in (en, de):
            assert text == text.strip() and "  " not in text and text[0].isupper() and text[-1] in ".?"
            assert not re.search(r" [,.?]|,,|,[^ ]", text), text
        assert 2 <= len(en.split()) <= 20
        # The German comma stands before every subordinate or relative clause in the middle of a sentence.
        assert not re.search(r"[^,] (weil|dass|obwohl|während|bevor|wenn) ", de), de


def test_sample_splits_are_disjoint_and_sized(tmp_path):
    directory = write_sample(tmp_path / "sample", seed=2, train_size=400, valid_size=50, test_size=60)
    assert directory == tmp_path / "sample"
    lines = {name: (directory / name).read_bytes().decode("utf-8").split("\n") for name in FILES}
    for name, content in lines.items():
        assert content[-1] == "", f"{name} must end with a newline"
        assert all(line and "\r" not in line and "  " not in line for line in content[:-1]), name
    sizes = {name: len(content) - 1 for name, content in lines.items()}
    assert sizes == {
        "train.en": 400,
        "train.de": 400,
        "valid.en": 50,
        "valid.de": 50,
        "test.en": 60,
        "test.de": 60,
    }
    train, valid, test = (set(lines[f"{split}.en"][:-1]) for split in ("train", "valid", "test"))
    assert len(train) == 400 and len(valid) == 50 and len(test) == 60
    assert not train & valid and not train & test and not valid & test


def test_same_seed_writes_byte_identical_files(tmp_path):
    sizes = {"train_size": 300, "valid_size": 40, "test_size": 40}
    first, second = (
        write_sample(tmp_path / "a", seed=7, **sizes),
        write_sample(tmp_path / "b", seed=7, **sizes),
    )
    other = write_sample(tmp_path / "c", seed=8, **sizes)
    for name in FILES:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert (first / "train.en").read_bytes() != (other / "train.en").read_bytes()


def test_default_sample_has_the_documented_sizes(tmp_path):
    directory = write_sample(tmp_path)
    counts = {name: (directory / name).read_text(encoding="utf-8").count("\n") for name in FILES}
    assert counts == {name: 20000 if name.startswith("train") else 500 for name in FILES}


def test_negative_sizes_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="negative"):
        generate_pairs(-1, seed=0)
    with pytest.raises(ValueError, match="split sizes"):
        write_sample(tmp_path, valid_size=-1)
