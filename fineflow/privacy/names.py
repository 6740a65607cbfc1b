"""Person names without an NER model: public name lists plus the context people write names in.

No NER model is installed or downloaded. A name is found where its context or the name lists say so:
- after a cue that introduces a person ("my name is X", "I'm X", "this is X", "Mr X", "called X",
  "spoke to X", a signature: "Regards,\\nX", "— X"): any capitalised word;
- after a role ("my husband X", "our IT person, X"): a word on the name lists;
- after a greeting or a thanks ("Hi X,", "Thanks, X."): a listed name, or a capitalised word the
  greeting closes ("Hi X," / "Hi X!"); after a closing and its comma on the same line ("Regards, X Y"):
  a listed given name or two capitalised words or more, ending the line;
- a listed given name addressed between a comma and a stop ("Good question, Fatima."); a common given
  name (within `bare_name_max_rank` of either list) in the middle of a sentence with no cue at all
  ("I told David"); a listed given name followed by a listed surname anywhere ("Grace Kim"); at a
  sentence start, a listed given name before "here" or a verb a person does ("Rebecca can",
  "Marcus was"), or a common one addressed before a comma ("Maria, welcome back": model answers open
  so, echoing the name the user gave);
- a line of capitalised words after a line ending in a comma (a signature: "Thanks so much,\nAmanda").
A found name extends over the capitalised words right after it ("Lukas Schneider", "James O'Connor"), and
the particles between them ("Ana de la Cruz").

The name lists are the 1990 US Census "frequently occurring names" files (public domain, a US
government work) as shipped in the `names` package (MIT): 5,494 given names and 88,799 surnames. They
lean towards US names; the context cues catch names they lack. Words that are on the lists but are
product vocabulary or ordinary words in this domain ("Alexa", "June") are configured in
`data_prep.pii.person.not_names`; spaCy's English stop words ("Will", "May") are never names. The lists'
rare given names are often ordinary words too ("German" ranks 756th of the male names, "Mac" 979th):
without a cue, only the common ones count.
"""

from __future__ import annotations

import importlib.resources
import re
import unicodedata
from functools import cache, lru_cache

from presidio_analyzer import EntityRecognizer, RecognizerResult

NAME_LISTS_PACKAGE = "names"
GIVEN_NAME_FILES = ("dist.male.first", "dist.female.first")
SURNAME_FILE = "dist.all.last"
ENTITY = "PERSON"
SCORE = 0.85
MAX_NAME_WORDS = 3

# A word: letters, with inner apostrophes or hyphens (O'Connor, Jean-Luc), but not a possessive or a
# contraction (Maria's, I'm, we'll).
_WORD = re.compile(r"[^\W\d_]+(?:['’](?!(?:s|m|re|ve|ll|d|t)\b)[^\W\d_]+|-[^\W\d_]+)*")
# A person naming themselves: after it a common given name is a name in lower case too ("my name is maria
# garcia"), with the listed surnames right after it, as people type in chat. "name:" counts only opening
# a line ("Name: maria", "full name: maria garcia"): "Set Schedule name: summer", "Zone name: sandy beach
# house" name things.
_INTRODUCTION_CUE = re.compile(
    r"(?:\bmy\s+name\s+is|\bmy\s+name['’]s|(?:^|\n)[ \t]*(?:(?:first|full)[ \t]+)?name[ \t]*:)[ \t]+$",
    re.IGNORECASE,
)
# Cues after which any capitalised word is a name.
_STRONG_CUE = re.compile(
    r"(?:\b(?:my\s+name\s+is|my\s+name's|i\s+am|i'm|i’m|this\s+is|it's|it’s|it\s+is|called|named"
    r"|ask(?:ed)?\s+for|(?:spoke|speak|speaking|talked|talking|chatted|chatting)\s+(?:to|with))[ \t]+"
    r"|\b(?:mr|mrs|ms|miss|dr|prof)\.?[ \t]+"
    r"|\b(?:regards|sincerely|cheers|best|thanks|thank\s+you|thx|signed)[,.!]?[ \t]*\n\s*"
    r"|(?:^|\n)[ \t]*(?:—|–|--|-|~)[ \t]*"
    # "name:" opening a line ("Name: Kenji Watanabe"); "Zone name: Upstairs", "Device name: Hall" name things
    r"|(?:^|\n)[ \t]*(?:(?:first|full|last|your|my)[ \t]+)?name[ \t]*:[ \t]*)$",
    re.IGNORECASE,
)
# A person introduced by who they are ("my husband David", "Our IT person, Raj Patel"): a listed name.
_ROLE_CUE = re.compile(
    r"\b(?:husband|wife|partner|son|daughter|father|mother|dad|mom|mum|brother|sister|friend|neighbou?r"
    r"|colleague|boss|manager|assistant|landlord|landlady|tenant|technician|installer|electrician|plumber"
    r"|person|owner)[,:]?[ \t]+$",
    re.IGNORECASE,
)
# Greetings and thanks: a name follows if it is a listed given name, or if the greeting closes after it.
_WEAK_CUE = re.compile(
    r"\b(?:hi|hello|hey|dear|thanks|thank\s+you|thx|bye|goodbye|welcome|morning|afternoon|evening"
    r"|yes|no|sure|ok|okay|understood|sorry|of\s+course|no\s+problem|great),?[ \t]+$",
    re.IGNORECASE,
)
# A closing and its comma on the same line ("Regards, Mary-Jane Watson"; "the best Thermostat." is no
# signature): a name that ends the line and is a listed given name or two capitalised words or more
# ("Cheers, Mate" and "Best, Regards" are none).
_CLOSING_CUE = re.compile(r"\b(?:regards|sincerely|cheers|signed|best|yours|warmly),[ \t]+$", re.IGNORECASE)
# Someone addressed mid-sentence: ", Fatima." / ", James," (a listed given name of any rank).
_VOCATIVE_BEFORE = re.compile(r",[ \t]+$")
_VOCATIVE_AFTER = re.compile(r"[ \t]*[.!?,]")
_CLOSES = re.compile(r"\s*(?:[,.!?:;\n]|$)")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;\n\"“(]\s*|^\s*)$")
_HERE = re.compile(r"\s+here\b")
# A listed given name opening a sentence is a name when a verb a person does follows ("Rebecca can").
_PERSON_VERB = re.compile(
    r"\s+(?:can|could|will|would|should|must|may|might|is|was|has|had|does|did|said|says|asked|told|"
    r"wants|wanted|needs|needed|called|wrote|set|installed|helped)\b"
)
# A line of capitalised words after a line ending in a comma is a signature ("Thanks so much,\nAmanda").
_SIGNATURE_BEFORE = re.compile(r",[ \t]*\n\s*$")
_LINE_ENDS = re.compile(r"[ \t]*(?:\n|$)")
_TITLES = ["Mr", "Mrs", "Ms", "Miss", "Dr", "Prof"]  # they introduce a name and are not one
# Lower-case words inside a name, between its capitalised words ("Ana de la Cruz", "Vincent van der Berg").
_PARTICLE = re.compile(r"de|del|della|der|den|di|da|das|dos|du|la|le|van|von|bin|ibn|al|el|ter|ten")
_CUE_WINDOW = 40  # characters before a word searched for a cue


@lru_cache(maxsize=65536)  # a text's words repeat across texts: most lookups are of words seen before
def _key(word: str) -> str:
    """How the lists spell a name: upper case ASCII letters only (O'Connor -> OCONNOR, José -> JOSE)."""
    ascii_word = unicodedata.normalize("NFKD", word).encode("ascii", "ignore").decode()
    return re.sub(r"[^A-Za-z]", "", ascii_word).upper()


@cache
def _ranked(name: str) -> tuple[str, ...]:
    """A packaged Census file's names, most frequent first (the files are sorted by frequency)."""
    text = importlib.resources.files(NAME_LISTS_PACKAGE).joinpath(name).read_text()
    return tuple(line.split()[0] for line in text.splitlines() if line.strip())


def name_lists() -> tuple[frozenset[str], frozenset[str]]:
    """(given names, surnames) from the packaged Census files: read once per process, nothing downloaded."""
    given = set().union(*(_ranked(name) for name in GIVEN_NAME_FILES))
    return frozenset(given), frozenset(_ranked(SURNAME_FILE))


def common_given_names(max_rank: int) -> frozenset[str]:
    """The given names ranked within `max_rank` by frequency on the male or the female list."""
    return frozenset(name for file in GIVEN_NAME_FILES for name in _ranked(file)[:max_rank])


class NameRecognizer(EntityRecognizer):
    """PERSON spans from the name lists and context cues (see the module docstring)."""

    def __init__(self, not_names: list[str], bare_name_max_rank: int, language: str):
        from spacy.lang.en.stop_words import STOP_WORDS

        self.given, self.surnames = name_lists()
        self.common_given = common_given_names(bare_name_max_rank)
        self.blocked = {_key(word) for word in [*not_names, *STOP_WORDS, *_TITLES]}
        super().__init__(supported_entities=[ENTITY], supported_language=language, name="NameRecognizer")

    def load(self) -> None:
        pass

    def analyze(self, text: str, entities: list[str], nlp_artifacts=None) -> list[RecognizerResult]:
        if ENTITY not in entities:
            return []
        words = list(_WORD.finditer(text))
        results = []
        index = 0
        while index < len(words):
            length = self._name_at(text, words, index)
            if length:
                start, end = words[index].start(), words[index + length - 1].end()
                results.append(RecognizerResult(ENTITY, start, end, SCORE))
                index += length
            else:
                index += 1
        return results

    def _name_at(self, text: str, words: list[re.Match], index: int) -> int:
        """How many words starting at `index` make a name (0: none)."""
        word = words[index]
        if not self._capitalised(word.group()):
            return self._introduced_in_lower_case(text, words, index)
        length = self._extent(text, words, index)
        after = text[words[index + length - 1].end() :]
        before = text[max(0, word.start() - _CUE_WINDOW) : word.start()]
        first = _key(word.group())
        if _INTRODUCTION_CUE.search(before):
            return self._with_lower_case_surnames(text, words, index, length)  # "My name is Maria garcia"
        if _STRONG_CUE.search(before) or (_SIGNATURE_BEFORE.search(before) and _LINE_ENDS.match(after)):
            return length
        if _ROLE_CUE.search(before) and (first in self.given or first in self.surnames):
            return length
        if _WEAK_CUE.search(before) and (first in self.given or _CLOSES.match(after) or _HERE.match(after)):
            return length
        if _CLOSING_CUE.search(before) and (first in self.given or length > 1) and _CLOSES.match(after):
            return length
        if first not in self.given:
            return 0
        if _VOCATIVE_BEFORE.search(before) and _VOCATIVE_AFTER.match(after):
            return length  # addressed: "Good question, Fatima."
        if not _SENTENCE_START.search(before):
            # no other cue, mid-sentence: "Windows and Mac" and "a German AI" are no people, "told David" is
            return length if first in self.common_given else 0
        if length > 1 and _key(words[index + 1].group()) in self.surnames:
            return length  # "Grace Kim" at a sentence start
        if _HERE.match(after) or _PERSON_VERB.match(after):
            return length
        if first in self.common_given and after.startswith(","):
            return length  # addressed at a sentence start: "Maria, welcome back."
        return 0

    def _introduced_in_lower_case(self, text: str, words: list[re.Match], index: int) -> int:
        """A lower-case common given name (within `bare_name_max_rank`) right after "my name is" or a line's
        "name:", with the listed surnames after it ("my name is maria garcia"); 0 otherwise. Other cues
        ("i'm", "this is", "called") are followed by ordinary words too often ("this is bill 2"): only
        capitalised names count there."""
        word = words[index].group()
        if not word.islower() or _key(word) not in self.common_given or _key(word) in self.blocked:
            return 0  # "my name is ok", "my name is long": the lists' tail holds ordinary words
        start = words[index].start()
        if not _INTRODUCTION_CUE.search(text, max(0, start - _CUE_WINDOW), start):
            return 0
        return self._with_lower_case_surnames(text, words, index, 1)

    def _with_lower_case_surnames(self, text: str, words: list[re.Match], index: int, length: int) -> int:
        """`length` words from `index`, and the lower-case listed surnames one space after them."""
        while length < MAX_NAME_WORDS and self._joins(text, words, index + length - 1):
            following = words[index + length]
            key = _key(following.group())
            labels = text[following.end() : following.end() + 1] in (":", "=")  # "name: maria pass: x"
            if not following.group().islower() or key not in self.surnames or key in self.blocked or labels:
                break
            length += 1
        return length

    def _extent(self, text: str, words: list[re.Match], index: int) -> int:
        """The word at `index` and the capitalised words right after it, one space apart, with the particles
        between them ("de la"); particles do not count towards MAX_NAME_WORDS."""
        length, capitalised = 1, 1
        while capitalised < MAX_NAME_WORDS:
            particles = 0
            while self._joins(text, words, index + length + particles - 1) and (
                _PARTICLE.fullmatch(words[index + length + particles].group())
            ):
                particles += 1
            following = index + length + particles
            if not self._joins(text, words, following - 1) or not self._capitalised(words[following].group()):
                break
            length, capitalised = length + particles + 1, capitalised + 1
        return length

    @staticmethod
    def _joins(text: str, words: list[re.Match], index: int) -> bool:
        """Whether the word at `index` has a next word one space after it."""
        return index + 1 < len(words) and text[words[index].end() : words[index + 1].start()] == " "

    def _capitalised(self, word: str) -> bool:
        """A name-like word: capitalised, not an acronym (SSN), not a stop word or a configured non-name."""
        return (
            len(word) > 1
            and word[0].isupper()
            and (word[1].islower() or word[1] in "'’")  # not C-wire, not an acronym
            and not word.isupper()
            and not any(_key(part) in self.blocked for part in [word, *word.split("-")])
        )
