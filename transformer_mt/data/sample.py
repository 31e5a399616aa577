"""The embedded sample corpus: a small, self-made English-German parallel corpus.

`transformer-mt train` with no arguments trains on it and the end-to-end tests use it: a tiny
Transformer learns it on a laptop CPU in minutes. Nothing is copied from a real corpus: a seeded
generator draws clause trees from a small grammar and renders each in both languages.

The grammar. A verb's frame asks for its noun phrases: intransitive ("sleeps"), accusative object
("sees the dog"), dative ("helps the man" -> "hilft dem Mann"), both ("gives the child a book" or "gives
a book to the child" -> "gibt dem Kind ein Buch"), a direction ("goes to the school" -> "geht zur
Schule"), a that-clause ("says that ...") or the copula ("is tired", "is under the table"). Noun
phrases have a determiner (the, a, this, every, possessives, numbers, many, some, none), up to two
adjectives and a noun with German gender, plural and weak declension (den Jungen), or are pronouns.
A clause has a tense (present; simple past, rendered as the German perfect; future; "can"), may be
negated, may carry an adverb of time and a place, and may be a question, have a relative clause or
an adverbial clause (because, although, while, when, before).

Why it needs attention and reordering. German agrees where English does not: articles and adjectives
inflect for gender, number and case (der kleine Hund, den kleinen Hund, dem kleinen Hund, ein kleiner
Hund), so a German word depends on the noun after it and on the verb or preposition that assigns its
case; a relative pronoun depends on its antecedent (der Hund, den ...). And words move: the finite
verb comes second in a main clause, so a fronted adverbial inverts subject and verb ("Heute sieht der
Mann den Hund."); participles, infinitives and separable prefixes close the clause ("hat ... gesehen",
"wird ... anrufen", "ruft ... an"); subordinate and relative clauses are verb-final ("..., weil der
Mann den Hund sieht."); an object's relative clause moves past the verb; "not a" becomes "kein".
Each English word maps to one German lemma given its context, so the German is a function of the
English and can be learnt exactly.

Both sides are cased and punctuated as real text: sentence-initial capitals, capitalised German
nouns, a final period or question mark, the German comma before every subordinate clause (English
has one only after a fronted subordinate clause: "When the cat comes, the dog barks.").
"""

from __future__ import annotations

import random
from collections import namedtuple
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

# ---------------------------------------------------------------------------------------------------
# Lexicon. Entries are separated by ";" or newlines, "_" stands for a space inside a field. Noun and
# adjective tags: P person, A animal, T thing, B text, Y story, U surface, F food, L place, * any.

_NOUNS = """
man men Mann m Männer P; woman women Frau f Frauen P; child children Kind n Kinder P
girl girls Mädchen n Mädchen P; boy boys Junge w Jungen P; teacher teachers Lehrer m Lehrer P
doctor doctors Arzt m Ärzte P; friend friends Freund m Freunde P; mother mothers Mutter f Mütter P
father fathers Vater m Väter P; brother brothers Bruder m Brüder P; sister sisters Schwester f Schwestern P
student students Student w Studenten P; neighbor neighbors Nachbar w Nachbarn P
farmer farmers Bauer w Bauern P; king kings König m Könige P; queen queens Königin f Königinnen P
dog dogs Hund m Hunde A; cat cats Katze f Katzen A; horse horses Pferd n Pferde A; bird birds Vogel m Vögel A
mouse mice Maus f Mäuse A; cow cows Kuh f Kühe A; lion lions Löwe w Löwen A; bear bears Bär w Bären A
monkey monkeys Affe w Affen A; elephant elephants Elefant w Elefanten A
rabbit rabbits Kaninchen n Kaninchen A; wolf wolves Wolf m Wölfe A; fox foxes Fuchs m Füchse A
book books Buch n Bücher TB; letter letters Brief m Briefe TB; newspaper newspapers Zeitung f Zeitungen TB
ball balls Ball m Bälle T; car cars Auto n Autos T; door doors Tür f Türen T
window windows Fenster n Fenster T; bag bags Tasche f Taschen T; key keys Schlüssel m Schlüssel T
picture pictures Bild n Bilder T; box boxes Kiste f Kisten T; flower flowers Blume f Blumen T
tree trees Baum m Bäume T; bike bikes Fahrrad n Fahrräder T; gift gifts Geschenk n Geschenke T
table tables Tisch m Tische U; chair chairs Stuhl m Stühle U; bed beds Bett n Betten U
street streets Straße f Straßen U; bridge bridges Brücke f Brücken U; story stories Geschichte f Geschichten Y
song songs Lied n Lieder Y; secret secrets Geheimnis n Geheimnisse Y; apple apples Apfel m Äpfel F
cake cakes Kuchen m Kuchen F; egg eggs Ei n Eier F; soup soups Suppe f Suppen F
banana bananas Banane f Bananen F; potato potatoes Kartoffel f Kartoffeln F; house houses Haus n Häuser L
garden gardens Garten m Gärten L; city cities Stadt f Städte L; park parks Park m Parks L
school schools Schule f Schulen L; kitchen kitchens Küche f Küchen L; room rooms Zimmer n Zimmer L
forest forests Wald m Wälder L; station stations Bahnhof m Bahnhöfe L; shop shops Laden m Läden L
library libraries Bibliothek f Bibliotheken L; river rivers Fluss m Flüsse L
"""
# English, German, tags, clash group (two adjectives of one group never meet: "old young"). The
# table is in English adjective order (opinion, size, temperature, age, colour): "a good small red ball".
_ADJECTIVES = """
good gut * -; beautiful schön * -; famous berühmt PLY -; friendly freundlich PA -; clever klug PA -
happy glücklich PA h; sad traurig PA h; tired müde PA -; hungry hungrig PA -; rich reich P r; poor arm PA r
clean sauber TUL d; dirty schmutzig PATUL d; quiet ruhig PAL q; loud laut PAL q; fast schnell AT -
fresh frisch F -; sweet süß F -; big groß * s; small klein * s; long lang BYUL l; short kurz BYU l
cold kalt FL t; warm warm FL t; old alt * a; young jung PA a; new neu TBUL a; red rot TUF c; blue blau TU c
green grün TUL c; black schwarz ATU c; white weiß ATU c
"""
# English base, English past (of the head word), German infinitive ("|" after a separable prefix),
# du form, er form, participle, perfect auxiliary (h haben, s sein), frame, subject tags, object tags.
# Frames: i intransitive, m motion, a accusative, d dative, ad accusative + dative, s that-clause, c copula.
_VERBS = """
be was sein bist ist gewesen s c * -; sleep slept schlafen schläfst schläft geschlafen h i PA -
work worked arbeiten arbeitest arbeitet gearbeitet h i P -
play played spielen spielst spielt gespielt h i PA -; laugh laughed lachen lachst lacht gelacht h i P -
sing sang singen singst singt gesungen h i PA -; talk talked reden redest redet geredet h i P -
dance danced tanzen tanzt tanzt getanzt h i P -; bark barked bellen bellst bellt gebellt h i A -
go went gehen gehst geht gegangen s m PA -; come came kommen kommst kommt gekommen s m PA -
run ran laufen läufst läuft gelaufen s m PA -; drive drove fahren fährst fährt gefahren s m P -
fly flew fliegen fliegst fliegt geflogen s m PA -; swim swam schwimmen schwimmst schwimmt geschwommen s m PA -
see saw sehen siehst sieht gesehen h a PA PATFLUB; like liked mögen magst mag gemocht h a PA PATFLB
have had haben hast hat gehabt h a P ATF; find found finden findest findet gefunden h a PA PATFB
buy bought kaufen kaufst kauft gekauft h a P TFB
write wrote schreiben schreibst schreibt geschrieben h a P BY; eat ate essen isst isst gegessen h a PA F
cook cooked kochen kochst kocht gekocht h a P F; wash washed waschen wäschst wäscht gewaschen h a P PATU
visit visited besuchen besuchst besucht besucht h a P PL; hear heard hören hörst hört gehört h a PA PAY
need needed brauchen brauchst braucht gebraucht h a PA PATF; love loved lieben liebst liebt geliebt h a PA PA
know knew kennen kennst kennt gekannt h a PA PAL; carry carried tragen trägst trägt getragen h a PA TF
open opened öffnen öffnest öffnet geöffnet h a P T; paint painted malen malst malt gemalt h a P PATL
catch caught fangen fängst fängt gefangen h a PA AT; take took nehmen nimmst nimmt genommen h a P TF
forget forgot vergessen vergisst vergisst vergessen h a P PTBY
look_for looked suchen suchst sucht gesucht h a PA PAT; call called an|rufen rufst ruft angerufen h a P P
invite invited ein|laden lädst lädt eingeladen h a P P; pick_up picked ab|holen holst holt abgeholt h a P PT
look_at looked an|schauen schaust schaut angeschaut h a PA PATLUB
tidy_up tidied auf|räumen räumst räumt aufgeräumt h a P L; help helped helfen hilfst hilft geholfen h d PA PA
thank thanked danken dankst dankt gedankt h d P P; follow followed folgen folgst folgt gefolgt s d PA PA
answer answered antworten antwortest antwortet geantwortet h d P P
belong_to belonged gehören gehörst gehört gehört h d ATL P; give gave geben gibst gibt gegeben h ad P TFB
show showed zeigen zeigst zeigt gezeigt h ad P ATLB; bring brought bringen bringst bringt gebracht h ad PA TFB
tell told erzählen erzählst erzählt erzählt h ad P Y; say said sagen sagst sagt gesagt h s P -
think thought denken denkst denkt gedacht h s P -; believe believed glauben glaubst glaubt geglaubt h s P -
"""
# Time adverbs with the tenses they fit: P present, D past, F future, C can.
_TIMES = """
today heute PDFC; yesterday gestern D; tomorrow morgen PFC; now jetzt PC; soon bald F; later später FC
often oft PDC; every_day jeden_Tag PDC; in_the_morning am_Morgen PDFC; in_the_evening am_Abend PDFC
at_night in_der_Nacht PDFC; last_week letzte_Woche D; next_week nächste_Woche F
"""
_PLACES = "here hier; there dort; at_home zu_Hause; outside draußen; upstairs oben; downstairs unten"
_PREPOSITIONS = """
in in dat L; on auf dat U; under unter dat UT; behind hinter dat LUT; in_front_of vor dat LUT
next_to neben dat LUTPA; with mit dat PA; for für acc PA; without ohne acc PAT
to zu dat LP; into in acc L; through durch acc L; out_of aus dat L
"""
_CONJUNCTIONS = "because weil; although obwohl; while während; when wenn; before bevor; that dass"
# Determiner, kind, German stem ("-": nothing). "no" only arises from negation ("not a" -> "kein").
_DETERMINERS = """
the article -; this der dies; every der jed; a ein ein; no ein kein; my ein mein; your ein dein; his ein sein
her ein ihr; our ein unser; their ein ihr; many strong viel; some strong einig; - none -; two number zwei
three number drei; four number vier; five number fünf; six number sechs; seven number sieben; eight number acht
"""
# Pronoun, German nominative, accusative, dative, English object form, person.
_PRONOUNS = "I ich mich mir me 1s; you du dich dir you 2s; he er ihn ihm him 3s; she sie sie ihr her 3s"
_PRONOUNS += "; we wir uns uns us 1p; they sie sie ihnen them 3p"
_AUXILIARIES = """
haben habe hast hat haben haben; sein bin bist ist sind sind; war war warst war waren waren
werden werde wirst wird werden werden; können kann kannst kann können können
"""
# German endings by case (rows nom, acc, dat) and gender (columns m, f, n, plural).
_ARTICLE = ("der die das die", "den die das die", "dem der dem den")
_RELATIVE = ("der die das die", "den die das die", "dem der dem denen")
_STRONG = ("er e es e", "en e es e", "em er em en")
_CONTRACTIONS = {("in", "dem"): "im", ("in", "das"): "ins", ("zu", "dem"): "zum", ("zu", "der"): "zur"}


def _table(text: str, width: int) -> dict[str, list[str]]:
    """Parse a lexicon table into {first field: the other fields}."""
    rows = [e.split() for line in text.strip().splitlines() for e in line.split(";") if e.strip()]
    assert all(len(r) == width for r in rows), [r for r in rows if len(r) != width]
    rows = [["" if f == "-" else f.replace("_", " ") for f in r] for r in rows]
    return {r[0]: r[1:] for r in rows}


Noun = namedtuple("Noun", "en en_plural de gender de_plural tags")  # gender m, f, n, w (weak: den Jungen)
Verb = namedtuple("Verb", "en en_past de du er participle aux frame subject object")
NOUNS = {en: Noun(en, *rest) for en, rest in _table(_NOUNS, 6).items()}
VERBS = {en: Verb(en, *rest) for en, rest in _table(_VERBS, 10).items()}
ADJECTIVES, TIMES = _table(_ADJECTIVES, 4), _table(_TIMES, 3)  # en: [de, tags, group] / [de, tenses]
PLACES = {en: de for en, (de,) in _table(_PLACES, 2).items()}
PREPOSITIONS = _table(_PREPOSITIONS, 4)  # en: [de, case, tags]
CONJUNCTIONS = {en: de for en, (de,) in _table(_CONJUNCTIONS, 2).items()}
DETERMINERS = _table(_DETERMINERS, 3)  # en: [kind, German stem]
_PRONOUN_FORMS, _AUX = _table(_PRONOUNS, 6), _table(_AUXILIARIES, 6)
_LOCATIVE, _ADJUNCT, _DIRECTION = tuple(PREPOSITIONS)[:6], tuple(PREPOSITIONS)[6:9], tuple(PREPOSITIONS)[9:]
_NUMBERS = tuple(k for k, (kind, _) in DETERMINERS.items() if kind == "number")
_PLURAL_ONLY, _QUANTIFIERS = ("", "many", "some", *_NUMBERS), ("every", "many", "some", *_NUMBERS)
_CASES, _PERSONS = ("nom", "acc", "dat"), ("1s", "2s", "3s", "1p", "3p")
TENSES = ("present", "past", "future", "can")

# ---------------------------------------------------------------------------------------------------
# Clause trees, drawn by the sampler or built by hand: Clause(NP("dog"), "see", obj=NP("man")).


@dataclass(frozen=True)
class NP:
    noun: str = ""  # a key of NOUNS, or "" for a pronoun
    det: str = "the"  # a key of DETERMINERS
    plural: bool = False
    adjs: tuple[str, ...] = ()
    pron: str = ""  # I, you, he, she, we, they
    rel: Clause | None = None  # a relative clause, with GAP as its subject or object
    gap: bool = False


GAP = NP(gap=True)  # the antecedent's place inside its relative clause (says nothing)


@dataclass(frozen=True)
class PP:
    prep: str
    np: NP


@dataclass(frozen=True)
class Clause:
    subj: NP
    verb: str
    obj: NP | None = None  # accusative object
    dat: NP | None = None  # dative object
    to_form: bool = False  # English "gives the book to the child" rather than "gives the child the book"
    comp: str | PP = ""  # the copula's complement: adjective, place adverb or locative phrase
    tense: str = "present"
    neg: bool = False
    time: str = ""
    place: str | PP = ""  # place adverb, locative or adjunct phrase, or a motion verb's direction
    front: str = ""  # what precedes the subject: "", "time", "place" or "sub"
    sub: tuple[str, Clause] | None = None  # (conjunction, clause)
    question: bool = False


def _person(np: NP) -> str:
    return _PRONOUN_FORMS[np.pron][4] if np.pron else "3p" if np.plural else "3s"


def _fill_gap(np: NP) -> tuple[Clause, int]:
    """The relative clause of `np` with the antecedent in its gap, and the gap's case (0, 1, 2)."""
    assert np.rel is not None
    for case, field in enumerate(("subj", "obj", "dat")):
        if (slot := getattr(np.rel, field)) is not None and slot.gap:
            return replace(np.rel, **{field: replace(np, rel=None, gap=True)}), case
    raise ValueError("a relative clause needs GAP as its subject or object")


def render(c: Clause) -> tuple[str, str]:
    """The English and German sentences of a clause tree, cased and punctuated."""
    end = "?" if c.question else "."
    en, de = _join(_en_clause(c)), _join(_de_clause(c, "v1" if c.question else "v2"))
    return en[0].upper() + en[1:] + end, de[0].upper() + de[1:] + end


def _join(words: list[str]) -> str:
    return " ".join(w for w in words if w).replace(" ,", ",").strip(", ")


# ---------------------------------------------------------------------------------------------------
# English.


def _en_np(np: NP | None, case: str = "obj") -> list[str]:
    if np is None or np.gap:
        return []
    if np.pron:
        return [np.pron if case == "nom" else _PRONOUN_FORMS[np.pron][3]]
    noun = NOUNS[np.noun]
    words = [*np.adjs, noun.en_plural if np.plural else noun.en]
    det = "these" if (np.det, np.plural) == ("this", True) else np.det
    det = "an" if det == "a" and words[0][0] in "aeiou" else det
    if np.rel:
        words += ["who" if "P" in noun.tags else "that", *_en_clause(_fill_gap(np)[0])]
    return [det, *words]


def _en_place(place: str | PP) -> list[str]:
    return [place.prep, *_en_np(place.np)] if isinstance(place, PP) else [place]


def _en_verb(c: Clause) -> list[str]:
    verb, person = VERBS[c.verb], _person(c.subj)
    head, *particle = verb.en.split()  # "look at": "looks at", "does not look at"
    third = person == "3s"
    if c.tense in ("future", "can"):
        aux, main = {"future": "will", "can": "can"}[c.tense], head
    elif head == "be":
        aux, main = {"1s": "am", "3s": "is"}.get(person, "are"), ""
        aux = ("was" if person in ("1s", "3s") else "were") if c.tense == "past" else aux
    elif c.neg or c.question:
        aux, main = ("did" if c.tense == "past" else "does" if third else "do"), head
    elif c.tense == "past" or not third:
        aux, main = "", verb.en_past if c.tense == "past" else head
    else:  # sees, watches, carries, has
        main = head[:-1] + "ies" if head[-1] == "y" and head[-2] not in "aeiou" else head + "s"
        aux, main = (
            "",
            "has" if head == "have" else head + "es" if head.endswith(("s", "sh", "ch", "o")) else main,
        )
    words = ["cannot"] if (aux, c.neg) == ("can", True) else [aux, "not"] if c.neg else [aux]
    return [w for w in (*words, main, *particle) if w]


def _en_clause(c: Clause) -> list[str]:
    subj, verb = _en_np(c.subj, "nom"), _en_verb(c)
    objects = [*_en_np(c.dat), *_en_np(c.obj)]
    if c.to_form:
        objects = [*_en_np(c.obj), "to", *_en_np(c.dat)]
    comp = _en_place(c.comp) if c.comp else []
    place, time = (_en_place(c.place) if c.place else []), ([c.time] if c.time else [])
    sub = [c.sub[0], *_en_clause(c.sub[1])] if c.sub else []
    if c.question:
        return [verb[0], *subj, *verb[1:], *objects, *comp, *place, *time, *sub]
    front = {"time": time, "place": place, "sub": [*sub, ","]}.get(c.front, [])
    rest = [*objects, *comp, *(place if c.front != "place" else []), *(time if c.front != "time" else [])]
    return [*front, *subj, *verb, *rest, *(sub if c.front != "sub" else [])]


# ---------------------------------------------------------------------------------------------------
# German.


def _gender(np: NP) -> int:
    return 3 if np.plural else "mfnw".index(NOUNS[np.noun].gender) % 3  # weak nouns are masculine


def _de_np(np: NP | None, case: str) -> list[str]:
    if np is None or np.gap:
        return []
    ci = _CASES.index(case)
    if np.pron:
        return [_PRONOUN_FORMS[np.pron][ci]]
    noun, g = NOUNS[np.noun], _gender(np)
    kind, stem = DETERMINERS[np.det]
    strong = _STRONG[ci].split()[g]
    weak = "e" if g < 3 and (ci == 0 or (ci == 1 and g > 0)) else "en"
    if kind == "article":  # der kleine Hund, den kleinen Hund
        det, ending = _ARTICLE[ci].split()[g], weak
    elif kind == "der":  # dieser kleine Hund
        det, ending = stem + strong, weak
    elif (
        kind == "ein"
    ):  # ein kleiner Hund, einen kleinen Hund: where "ein" shows no ending the adjective does
        bare = (ci, g) in ((0, 0), (0, 2), (1, 2))
        det, ending = stem + ("" if bare else strong), strong if bare else weak
    else:  # viele kleine Hunde, zwei kleine Hunde, kleine Hunde
        det, ending = stem + (strong if kind == "strong" else ""), strong
    adjs = [ADJECTIVES[a][0] + (ending[1:] if ADJECTIVES[a][0].endswith("e") else ending) for a in np.adjs]
    if np.plural:  # dative plural adds -n: den Kindern
        form = noun.de_plural + ("n" if ci == 2 and noun.de_plural[-1] not in "ns" else "")
    else:
        form = noun.de_plural if noun.gender == "w" and ci > 0 else noun.de
    return [det, *adjs, form, *([*_de_relative(np), ","] if np.rel else [])]


def _de_relative(np: NP) -> list[str]:
    clause, ci = _fill_gap(np)
    return [",", _RELATIVE[ci].split()[_gender(np)], *_de_clause(clause, "final")]


def _de_place(place: str | PP) -> list[str]:
    if not isinstance(place, PP):
        return [PLACES.get(place) or ADJECTIVES[place][0]]
    prep, case, _ = PREPOSITIONS[place.prep]
    words = _de_np(place.np, case)
    contracted = _CONTRACTIONS.get((prep, words[0])) if place.np.det == "the" and not place.np.pron else None
    return [contracted, *words[1:]] if contracted else [prep, *words]


def _de_verb(c: Clause) -> tuple[str, list[str]]:
    """The finite verb and the right bracket (separable prefix, participle or infinitive)."""
    verb, p = VERBS[c.verb], _PERSONS.index(_person(c.subj))
    prefix, base = verb.de.split("|") if "|" in verb.de else ("", verb.de)
    if verb.frame == "c" and c.tense in ("present", "past"):  # "sein" narrates in the preterite: "war"
        return _AUX["sein" if c.tense == "present" else "war"][p], []
    if c.tense == "present":  # ich sehe; but ich mag, like er mag
        ich = (base[:-2] if base.endswith("en") else base[:-1]) + "e" if verb.er.endswith("t") else verb.er
        return (ich, verb.du, verb.er, base, base)[p], [prefix]
    if c.tense == "past":
        return _AUX["haben" if verb.aux == "h" else "sein"][p], [verb.participle]
    return _AUX["werden" if c.tense == "future" else "können"][p], [prefix + base]


def _de_clause(c: Clause, order: str) -> list[str]:
    """`order`: "v2" main clause, "v1" question, "final" subordinate or relative clause."""
    finite, bracket = _de_verb(c)
    obj, dat, negation = c.obj, c.dat, ["nicht"] if c.neg else []
    target = obj or dat  # "not a dog" / "not dogs" -> "keinen Hund" / "keine Hunde"
    if c.neg and target is not None and not target.pron and target.det in ("a", ""):
        negation, target = [], replace(target, det="no")
        obj, dat = (target, dat) if obj is not None else (obj, target)
    extraposed: list[str] = []
    if obj is not None and obj.rel:  # an object's relative clause moves past the verb
        extraposed, obj = _de_relative(obj), replace(obj, rel=None)
    # The middle field: pronouns before nouns, dative before accusative, "nicht" before the place.
    pronouns = [w for np, case in ((obj, "acc"), (dat, "dat")) if np and np.pron for w in _de_np(np, case)]
    nouns = [w for np, case in ((dat, "dat"), (obj, "acc")) if np and not np.pron for w in _de_np(np, case)]
    subj, time = _de_np(c.subj, "nom"), TIMES[c.time][0].split() if c.time else []
    place, comp = (_de_place(c.place) if c.place else []), (_de_place(c.comp) if c.comp else [])
    sub = [",", CONJUNCTIONS[c.sub[0]], *_de_clause(c.sub[1], "final")] if c.sub else []
    fronted = (c.front or "subj") if order == "v2" else ""
    front = {"subj": subj, "time": time, "place": place, "sub": [*sub[1:], ","], "": []}[fronted]
    middle = [*(subj if fronted != "subj" else []), *pronouns, *(time if fronted != "time" else []), *nouns]
    middle += [*negation, *(place if fronted != "place" else []), *comp]
    if order == "final":  # "..., weil er ihn heute angerufen hat" / "anruft"
        cluster = [bracket[0] + finite] if c.tense == "present" and bracket else [*bracket, finite]
        return [*middle, *cluster, *extraposed]
    return [*front, finite, *middle, *bracket, *extraposed, *(sub if fronted != "sub" else [])]


# ---------------------------------------------------------------------------------------------------
# The sampler: random clause trees, mostly plain main clauses, the rest with a fronted adverbial, an
# adverbial clause, a relative clause, or questions.


def _bag(weights: dict) -> tuple:
    """Each key repeated by its weight, for a fast weighted `rng.choice`."""
    return tuple(key for key, weight in weights.items() for _ in range(weight))


_DETS = _bag({"the": 36, "a": 18, "this": 6, "every": 2, "my": 4, "your": 3, "his": 3, "her": 3, "our": 2})
_DETS += _bag({"their": 2, "many": 3, "some": 3, "#": 8, "": 7})  # "#": a number
_TENSES = _bag({"present": 9, "past": 5, "future": 3, "can": 3})
_ADJ_COUNTS, _FEW_ADJS = _bag({0: 55, 1: 38, 2: 7}), _bag({0: 7, 1: 3})  # how many adjectives
_KINDS = _bag({"plain": 38, "front": 15, "sub": 17, "front_sub": 7, "question": 8, "relative": 15})
_SUB_TENSES = {"when": ("present", "can"), "before": ("present", "past", "can")}  # not "when he will"
_SUB_TENSES["while"] = _SUB_TENSES["before"]
_ADJ_RANK = {a: i for i, a in enumerate(ADJECTIVES)}
_TIMES_FOR = {t: tuple(k for k, (_, ts) in TIMES.items() if "PDFC"[i] in ts) for i, t in enumerate(TENSES)}
_CLAUSE_VERBS = tuple(k for k, v in VERBS.items() if v.frame != "s")


def _fits(tags: str, allowed: str) -> bool:
    return allowed == "*" or any(t in allowed for t in tags)


@cache
def _nouns_for(allowed: str) -> tuple[str, ...]:
    return tuple(k for k, n in NOUNS.items() if _fits(n.tags, allowed))


@cache
def _adjectives_for(tags: str) -> tuple[str, ...]:
    return tuple(k for k, (_, allowed, _) in ADJECTIVES.items() if _fits(tags, allowed))


@cache
def _relative_verbs(tags: str) -> tuple[tuple[str, str], ...]:
    """(verb, role of the gap) for an antecedent with these tags: "who sees ...", "that he sees"."""
    frames = ("i", "m", "a", "d", "c")
    subj = [(k, "subj") for k, v in VERBS.items() if v.frame in frames and _fits(tags, v.subject)]
    obj = [(k, "obj" if v.frame == "a" else "dat") for k, v in VERBS.items() if v.frame in ("a", "d")]
    return tuple(subj + [(k, role) for k, role in obj if _fits(tags, VERBS[k].object)])


def _sample_np(rng: random.Random, allowed: str, *, pron: float = 0.0, adjs=_ADJ_COUNTS) -> NP:
    if _fits("P", allowed) and rng.random() < pron:
        return NP(pron=rng.choice(tuple(_PRONOUN_FORMS)))
    noun = rng.choice(_nouns_for(allowed))
    det = rng.choice(_DETS)
    det = rng.choice(_NUMBERS) if det == "#" else det
    plural = det in _PLURAL_ONLY or (det not in ("a", "every") and rng.random() < 0.3)
    adjectives = sorted(rng.sample(_adjectives_for(NOUNS[noun].tags), rng.choice(adjs)), key=_ADJ_RANK.get)
    if len(adjectives) == 2 and ADJECTIVES[adjectives[0]][2] == ADJECTIVES[adjectives[1]][2] != "":
        adjectives.pop()  # not "the old young man"
    return NP(noun, det, plural, tuple(adjectives))


def _sample_pp(rng: random.Random, preps: tuple[str, ...]) -> PP:
    prep = rng.choice(preps)
    return PP(prep, _sample_np(rng, PREPOSITIONS[prep][2], pron=0.1, adjs=_FEW_ADJS))


def _core(
    rng: random.Random, verb: str = "", *, subj: NP | None = None, tenses=TENSES, adjs=_ADJ_COUNTS
) -> Clause:
    """A clause of a random (or given) verb with the phrases its frame asks for."""
    key = verb or rng.choice(tuple(VERBS))
    v = VERBS[key]
    while (tense := rng.choice(_TENSES)) not in tenses or (v.frame == "c" and tense == "can"):
        pass
    subj = subj or _sample_np(rng, v.subject, pron=0.25, adjs=adjs)
    pron = 0.0 if v.en.endswith(" up") else 0.12  # English wants "picks him up", not "picks up him"
    obj = _sample_np(rng, v.object, pron=pron, adjs=adjs) if v.frame in ("a", "ad") else None
    dat_tags = "P" if v.frame == "ad" else v.object
    dat = _sample_np(rng, dat_tags, pron=0.15, adjs=adjs) if "d" in v.frame else None
    comp: str | PP = ""
    if v.frame == "c":  # "is tired", "is under the table", "is at home"
        fitting = _adjectives_for("P" if subj.pron else NOUNS[subj.noun].tags)
        r, adjectives = rng.random(), [a for a in fitting if a not in subj.adjs]
        comp = rng.choice(adjectives) if r < 0.6 else _sample_pp(rng, _LOCATIVE) if r < 0.85 else ""
        comp = comp or rng.choice(tuple(PLACES))
    place: str | PP = ""
    if v.frame == "m" and rng.random() < 0.7:
        place = _sample_pp(rng, _DIRECTION)
    elif v.frame in ("i", "a", "d", "ad") and rng.random() < 0.3:
        r = rng.random()
        place = _sample_pp(rng, _LOCATIVE if r < 0.45 else _ADJUNCT) if r < 0.7 else rng.choice(tuple(PLACES))
    neg = rng.random() < 0.15
    if neg:  # no "not every dog", "not two dogs": "nicht" would land in the wrong place
        obj, dat = (replace(np, det="the") if np and np.det in _QUANTIFIERS else np for np in (obj, dat))
    time = rng.choice(_TIMES_FOR[tense]) if v.frame != "s" and rng.random() < 0.25 else ""  # not: "... that"
    sub = ("that", _core(rng, rng.choice(_CLAUSE_VERBS))) if v.frame == "s" else None
    to_form = v.frame == "ad" and rng.random() < 0.4
    return Clause(subj, key, obj, dat, to_form, comp, tense, neg, time, place, sub=sub)


def _sample_relative(rng: random.Random, antecedent: NP) -> Clause:
    key, role = rng.choice(_relative_verbs(NOUNS[antecedent.noun].tags))
    subj = replace(antecedent, rel=None) if role == "subj" else None
    c = _core(rng, key, subj=subj, tenses=("present", "past"), adjs=_FEW_ADJS)
    return replace(c, neg=False, time="", place="", **{role: GAP})


def _sample_sentence(rng: random.Random) -> Clause:
    kind = rng.choice(_KINDS)
    c = _core(rng, "" if kind in ("plain", "front", "question") else rng.choice(_CLAUSE_VERBS))
    if any(np and np.pron for np in (c.obj, c.dat)) and not c.subj.pron:  # not "Heute sieht ihn der Mann"
        kind = {"front": "plain", "question": "plain", "front_sub": "sub"}.get(kind, kind)
    if kind == "front":
        frontable = isinstance(c.place, str) or c.place.prep in _LOCATIVE
        options = [f for f, ok in (("time", c.time), ("place", c.place and frontable)) if ok]
        if not options:
            c, options = replace(c, time=rng.choice(_TIMES_FOR[c.tense])), ["time"]
        return replace(c, front=rng.choice(options))
    if kind == "question":
        return replace(c, neg=False, question=True)
    if kind in ("sub", "front_sub"):
        conj = rng.choice(("because", "although", "while", "when", "before")[kind == "front_sub" :])
        sub = _core(rng, rng.choice(_CLAUSE_VERBS), tenses=_SUB_TENSES.get(conj, TENSES))
        return replace(c, sub=(conj, sub), front="sub" if kind == "front_sub" else "")
    if kind == "relative" and not c.subj.pron and rng.random() < 0.5:
        return replace(c, subj=replace(c.subj, rel=_sample_relative(rng, c.subj)))
    if kind == "relative" and VERBS[c.verb].frame == "a" and not c.obj.pron:  # "... sees the dog that barks."
        obj = replace(c.obj, rel=_sample_relative(rng, c.obj))
        return replace(c, obj=obj, neg=False, place="", front="time" if c.time else "")
    return c


# ---------------------------------------------------------------------------------------------------
# The corpus.


def generate_pairs(n: int, *, seed: int) -> list[tuple[str, str]]:
    """`n` distinct (English, German) pairs of at most 20 English words; the same for the same seed."""
    if n < 0:
        raise ValueError(f"cannot generate a negative number of sentence pairs ({n})")
    rng = random.Random(seed)
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for _ in range(50 * n + 1000):
        if len(pairs) == n:
            return pairs
        en, de = render(_sample_sentence(rng))
        if len(en.split()) <= 20 and en not in seen:
            seen.add(en)
            pairs.append((en, de))
    raise RuntimeError(f"the sample grammar yielded only {len(pairs)} distinct sentences, {n} were asked for")


def write_sample(
    directory: Path | str,
    *,
    seed: int = 1,
    train_size: int = 20000,
    valid_size: int = 500,
    test_size: int = 500,
) -> Path:
    """Write train/valid/test.{en,de} (UTF-8, one sentence a line) into `directory` and return it.

    The splits share no English sentence, and no sentence repeats within a split. The same seed
    gives byte-identical files.
    """
    if min(train_size, valid_size, test_size) < 0:
        raise ValueError(f"split sizes must be >= 0, got {train_size}, {valid_size}, {test_size}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pairs = generate_pairs(train_size + valid_size + test_size, seed=seed)
    random.Random(f"split-{seed}").shuffle(pairs)  # so that no split gets the commonest short sentences
    held_out = valid_size + test_size
    splits = {"train": pairs[held_out:], "valid": pairs[:valid_size], "test": pairs[valid_size:held_out]}
    for split, part in splits.items():
        for side, lang in enumerate(("en", "de")):
            text = "".join(pair[side] + "\n" for pair in part)
            (directory / f"{split}.{lang}").write_text(text, encoding="utf-8", newline="\n")
    return directory
