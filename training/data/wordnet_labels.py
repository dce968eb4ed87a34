"""Stamp names -> sets of acceptable ImageNet-1k classes, through WordNet 3.0 (offline).

A term (``tiger``, ``sliced orange``) is looked up as a noun; its senses are tried in WordNet's order
and the first sense whose hyponym closure (the sense itself and everything below it) holds ImageNet
classes gives the label set: ``tiger`` (sense 1 is a fierce person) -> tiger 292; ``dog`` -> the 118
dog classes; ``penguin`` -> king penguin 145. Where nothing lies below the first (most common) sense,
the nearest ImageNet class above it does (``woodlouse`` -> isopod: a more general name, still a right
answer). A stamp's terms come from its English description ("A Sumatran tiger."), or its file name
where it has none, longest phrase first. A set larger than :data:`MAX_CLASSES` is too broad to judge
an answer by, and drops the stamp, as does a name with no class. ``stamp_labels.tsv`` overrides
names WordNet gets wrong, with a reason per line.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from fnmatch import fnmatch
from functools import cached_property
from pathlib import Path
from typing import Any

MAX_CLASSES = 150
OVERRIDES = Path(__file__).with_name("stamp_labels.tsv")
STOPWORDS = frozenset(["a", "an", "the", "and", "some", "two", "three", "pair", "very"])
# A description's naming phrase ends before the first of these ("A hoverfly resembles a honeybee").
CLAUSE_WORDS = frozenset(
    "that which who is are was lets resembles called used from to for like with in on during it its".split()  # noqa: SIM905
)


@dataclass(frozen=True)
class Mapping:
    """How one stamp got its label set: the term, the WordNet synsets and the classes, or why not."""

    stamp: str
    term: str
    synsets: tuple[str, ...]
    classes: frozenset[int]
    how: str  # "wordnet", "override", or why the stamp is dropped

    @property
    def kept(self) -> bool:
        return self.how in ("wordnet", "override")


def read_overrides(path: Path = OVERRIDES) -> dict[str, tuple[tuple[str, ...], str]]:
    """stamp id or glob pattern -> (synset names, reason); no synsets (``-``) drops the stamp."""
    lines = (x for x in path.read_text(encoding="utf-8").splitlines() if x.strip() and not x.startswith("#"))
    out: dict[str, tuple[tuple[str, ...], str]] = {}
    for row in csv.reader(lines, delimiter="\t"):
        if len(row) != 3 or not row[2].strip():
            raise ValueError(f"{path}: expected 'stamp<TAB>synsets or -<TAB>reason', got {row}")
        stamp, synsets, reason = row
        out[stamp] = (tuple(s for s in synsets.split(",") if s and s != "-"), reason)
    return out


def main_phrase(text: str) -> list[str]:
    """The naming phrase of a description, as lower-case words: cut at the first punctuation or clause
    word ("Venus—the second planet", "A hoverfly resembles a bee"), quotes and articles dropped, and
    "X of Y" read as Y ("a head of lettuce" names lettuce)."""
    text = re.split(r"[—–,.(!?:;]", re.sub("[\"“”‘’']", "", text), maxsplit=1)[0].lower()
    words = [w for w in re.split(r"[^a-z]+", text) if w]
    for i, w in enumerate(words):
        if w in CLAUSE_WORDS:
            words = words[:i]
            break
    words = [w for w in words if w not in STOPWORDS]
    return words[words.index("of") + 1 :] if "of" in words else words


def terms(description: str, stamp_id: str) -> list[str]:
    """Candidate WordNet terms from the description (or, without one, the file name): every phrase of
    its naming part, longest first, rightmost first (the head noun ends an English noun phrase)."""
    name = Path(stamp_id).name
    if not description.strip():
        name = re.sub(r"(_mirror|[-_]?\d+)$", "", name)
    out: list[str] = []
    words = main_phrase(description or name.replace("_", " ").replace("-", " "))
    for n in range(len(words), 0, -1):
        for start in range(len(words) - n, -1, -1):
            phrase = "_".join(words[start : start + n])
            if phrase not in out:
                out.append(phrase)
    return out


class ImageNetWordNet:
    """ImageNet-1k classes as WordNet synsets, and the classes under any synset."""

    def __init__(self, nltk_data: str | None = None) -> None:
        from fitguard.labels import imagenet_classes
        from fitguard.training.data.wordnet import load_wordnet

        self.wn = load_wordnet(nltk_data)
        self._wnids = [c.wnid for c in imagenet_classes()]

    @cached_property
    def _ancestors(self) -> list[frozenset[str]]:
        out = []
        for wnid in self._wnids:
            s = self.wn.synset_from_pos_and_offset(wnid[0], int(wnid[1:]))
            up = s.closure(lambda x: x.hypernyms() + x.instance_hypernyms())
            out.append(frozenset({s.name(), *(a.name() for a in up)}))
        return out

    def classes(self, synset: Any) -> frozenset[int]:
        """ImageNet classes that are ``synset`` or its hyponyms."""
        name = synset if isinstance(synset, str) else synset.name()
        return frozenset(i for i, anc in enumerate(self._ancestors) if name in anc)

    @cached_property
    def _class_of(self) -> dict[str, int]:
        return {
            self.wn.synset_from_pos_and_offset(w[0], int(w[1:])).name(): i for i, w in enumerate(self._wnids)
        }

    def nearest_class_above(self, synset: Any) -> frozenset[int]:
        """The ImageNet class that is the closest hypernym of ``synset`` (a woodlouse is an isopod)."""
        frontier = [synset]
        while frontier:
            frontier = [h for s in frontier for h in s.hypernyms() + s.instance_hypernyms()]
            hits = frozenset(self._class_of[h.name()] for h in frontier if h.name() in self._class_of)
            if hits:
                return hits
        return frozenset()

    def lookup(self, term: str) -> tuple[str, frozenset[int]] | None:
        """The first noun sense of ``term`` with ImageNet classes below it, or, for the first (most
        common) sense only, the nearest class above it: (synset name, classes)."""
        for rank, s in enumerate(self.wn.synsets(term, pos="n")):
            found = self.classes(s) or (self.nearest_class_above(s) if rank == 0 else frozenset())
            if found:
                return s.name(), found
        return None

    def map_stamp(self, stamp_id: str, description: str, overrides: dict | None = None) -> Mapping:
        """The label set of one stamp (override first, then the first term WordNet maps)."""
        overrides = read_overrides() if overrides is None else overrides
        key = (
            stamp_id if stamp_id in overrides else next((k for k in overrides if fnmatch(stamp_id, k)), None)
        )
        if key is not None:
            synsets, reason = overrides[key]
            found = frozenset().union(*(self.classes(self.wn.synset(s)) for s in synsets))
            how = "override" if found else f"dropped by override: {reason}"
            return Mapping(stamp_id, "", synsets, found, how)
        for term in terms(description, stamp_id):
            hit = self.lookup(term)
            if hit is None:
                continue
            name, found = hit
            if len(found) > MAX_CLASSES:
                return Mapping(stamp_id, term, (name,), found, f"too broad ({len(found)} classes)")
            return Mapping(stamp_id, term, (name,), found, "wordnet")
        return Mapping(stamp_id, "", (), frozenset(), "no ImageNet class")
