"""Wu-Palmer similarity between ImageNet classes, offline, from Debian's WordNet 3.0 files.

ImageNet wnids are WordNet 3.0 noun offsets (``n02123045`` -> noun synset at offset 2123045), so the
semantic distance between a clean and a degraded prediction (the paper's Fig. 3) needs only the
WordNet database. Debian ships it: ``wordnet-base`` (data/index/exception files and the
``lexnames(5WN)`` man page) and ``wordnet-sense-index`` (``index.sense``, which nltk's reader opens
at start-up). nltk's reader also wants a ``lexnames`` file, which Debian does not ship as a file; it
is written from the man page's table, or from the same 45 names below where man pages are stripped.

nltk 3.10 only reads corpora under its data roots and refuses symbolic links that leave them, so the
files are copied (not linked) into ``<NLTK_DATA>/corpora/wordnet`` and that root is added to
``nltk.data.path``.
"""

from __future__ import annotations

import gzip
import re
import shutil
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

from fitguard.cache import cache_root

DEBIAN_WORDNET = Path("/usr/share/wordnet")
LEXNAMES_MAN = Path("/usr/share/man/man5/lexnames.5WN.gz")
APT_PACKAGES = ("wordnet-base", "wordnet-sense-index")

# Files nltk's WordNetCorpusReader opens (lexnames is written separately).
_POS = ("adj", "adv", "noun", "verb")
WORDNET_FILES = (
    *(f"{kind}.{pos}" for kind in ("data", "index") for pos in _POS),
    *(f"{pos}.exc" for pos in _POS),
    "index.sense",
)

# WordNet 3.0's lexicographer files, numbered 00..44 (lexnames(5WN)); used when the man page is absent.
_LEXNAMES_TEXT = """
    adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body
    noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location
    noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process
    noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change
    verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation
    verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather
    adj.ppl
"""
LEXNAMES: tuple[str, ...] = tuple(_LEXNAMES_TEXT.split())
_SYNTACTIC_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


class WordNetUnavailableError(RuntimeError):
    """The WordNet 3.0 database files are not installed."""


def default_nltk_data() -> Path:
    """``nltk_data/`` under :func:`fitguard.cache.cache_root`."""
    return cache_root() / "nltk_data"


def lexnames_from_man(path: Path = LEXNAMES_MAN) -> tuple[str, ...] | None:
    """The lexicographer file names from the ``lexnames(5WN)`` man page table, or None if absent."""
    if not path.exists():
        return None
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        text = f.read()
    rows = re.findall(r"^(\d\d)\t([a-z]+\.[A-Za-z]+)", text, re.M)
    names = tuple(name for _, name in rows)
    if [int(i) for i, _ in rows] != list(range(len(rows))) or len(names) != len(LEXNAMES):
        return None
    return names


def setup_wordnet(nltk_data: str | Path | None = None, source: str | Path = DEBIAN_WORDNET) -> Path:
    """Copy Debian's WordNet 3.0 into ``<nltk_data>/corpora/wordnet`` and return ``nltk_data``.

    Idempotent: files already copied with the same size are kept.

    Raises:
        WordNetUnavailableError: ``source`` lacks a file; the message names the apt packages.
    """
    root = Path(nltk_data) if nltk_data is not None else default_nltk_data()
    src = Path(source)
    missing = [f for f in WORDNET_FILES if not (src / f).is_file()]
    if missing:
        raise WordNetUnavailableError(
            f"WordNet 3.0 files missing under {src}: {', '.join(missing)}. Install them with "
            f"`apt-get install -y --no-install-recommends {' '.join(APT_PACKAGES)}`"
        )
    dest = root / "corpora" / "wordnet"
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORDNET_FILES:
        target = dest / name
        if not target.exists() or target.stat().st_size != (src / name).stat().st_size:
            shutil.copyfile(src / name, target)
    names = lexnames_from_man() or LEXNAMES
    text = "".join(f"{i:02d}\t{n}\t{_SYNTACTIC_CATEGORY[n.split('.')[0]]}\n" for i, n in enumerate(names))
    (dest / "lexnames").write_text(text, encoding="ascii")
    return root


@lru_cache(maxsize=2)
def load_wordnet(nltk_data: str | None = None) -> Any:
    """An nltk ``WordNetCorpusReader`` over the copied WordNet 3.0 (set up on first use)."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    root = setup_wordnet(nltk_data)
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The multilingual functions")  # no OMW offline: fine
        return WordNetCorpusReader(nltk.data.find("corpora/wordnet"), None)


class WuPalmer:
    """Wu-Palmer similarity between ImageNet class indices (1.0 for the same class)."""

    def __init__(self, nltk_data: str | Path | None = None) -> None:
        from fitguard.labels import imagenet_classes

        self._wn = load_wordnet(None if nltk_data is None else str(nltk_data))
        self._wnids = [c.wnid for c in imagenet_classes()]
        self._synsets: dict[int, Any] = {}
        self._cache: dict[tuple[int, int], float] = {}

    def synset(self, index: int) -> Any:
        if index not in self._synsets:
            wnid = self._wnids[index]
            self._synsets[index] = self._wn.synset_from_pos_and_offset(wnid[0], int(wnid[1:]))
        return self._synsets[index]

    def __call__(self, a: int, b: int) -> float:
        a, b = int(a), int(b)
        if a == b:
            return 1.0
        key = (min(a, b), max(a, b))
        if key not in self._cache:
            self._cache[key] = float(self.synset(a).wup_similarity(self.synset(b)) or 0.0)
        return self._cache[key]

    def many(self, a: Any, b: Any) -> list[float]:
        return [self(x, y) for x, y in zip(a, b, strict=True)]
