"""Plain text -> sentences of words by rules, with no model: the tokeniser and sentence splitter of the markup
path of text_input.py (with --ner spacy, spaCy's own tokens and sentences are used instead).

Words: a run of letters and digits with inner hyphens or apostrophes ("well-known", "O'Brien"), a number with
inner points or commas ("3.14", "1,000"), letters with points ("U.S.", "e.g.", "Ph.D."), a known abbreviation
or a capital initial with its point ("Dr.", "J."), a run of points ("..."), a clitic ("'s" after a mention);
any other character that is not white space is a word of its own. Given ``bounds`` (character offsets), words
never cross them, so that a marked mention never starts or ends inside a word ("[Ada|PER]'s" -> "Ada", "'s").

Sentences end after ".", "!", "?", "..." or "…" (and the closing quotes or brackets right after it) when the
next word starts with a capital letter, a digit or an opening quote or bracket, and always at a blank line (a
paragraph break). An abbreviation or an initial never ends a sentence ("Dr. Smith", "J. R. R. Tolkien", "e.g.
Rome"), nor does a point inside a number. (text_input.py joins the sentences that a mention crosses.)
"""
import itertools
import re

# The points of these stay with the word and end no sentence: titles before a name, abbreviations before an
# example, a number or a date. Compared lower-cased. Words that often end a sentence ("etc.", "Inc.", "no.") are
# left out: their point ends one when a capitalised word follows.
ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "st", "sr", "jr", "gen", "col", "lt", "sgt", "capt", "cmdr", "adm", "gov",
    "sen", "rep", "pres", "rev", "hon", "fr", "mt", "ft", "vs", "cf", "al", "approx", "ca", "vol", "fig", "figs",
    "eq", "eqs", "sec", "ch", "pp", "eds", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct",
    "nov", "dec"
})
WORD = re.compile(r"""
    [^\W\d_]{1,2}\.(?:[^\W\d_]{1,2}\.)+     # letters with points: U.S. e.g. Ph.D.
  | \d+(?:[.,]\d+)+                         # a number with inner points or commas: 3.14 1,000
  | \w+(?:[-'’]\w+)*(?:\.(?!\.))?           # a word, with its point (kept only for an abbreviation or initial)
  | \.{2,}                                  # an ellipsis
  | ['’](?:[sdm]|ll|re|ve)\b               # a clitic after a word: 's 'll 're
  | \S                                      # any other character
""", re.VERBOSE)
ENDS = {".", "!", "?", "…"}
CLOSING = set("\"'”’)]}»")
OPENING = set("\"'“‘([{«")


def words(text, bounds=()):
    """[(word, start, end)] of ``text`` (character offsets), never across an offset in ``bounds``."""
    cuts = sorted({0, len(text), *(b for b in bounds if 0 < b < len(text))})
    out = []
    for a, b in itertools.pairwise(cuts):
        for m in WORD.finditer(text, a, b):
            word, start = m.group(), m.start()
            if word.endswith(".") and len(word) > 1 and word[0].isalnum() and "." not in word[:-1] \
                    and not _keeps_point(word[:-1]):
                out += [(word[:-1], start, m.end() - 1), (".", m.end() - 1, m.end())]
            else:
                out.append((word, start, m.end()))
    return out


def _keeps_point(word):
    """An abbreviation ("Dr") or a capital initial ("J") keeps its point as part of the word."""
    return word.lower() in ABBREVIATIONS or (len(word) == 1 and word.isupper())


def split(text, bounds=()):
    """Sentences of ``text``: lists of (word, start, end), character offsets. No word crosses an offset in
    ``bounds``."""
    tokens = words(text, bounds)
    sentences, current = [], []
    for i, token in enumerate(tokens):
        current.append(token)
        if i + 1 < len(tokens) and _breaks(text, tokens, i):
            sentences.append(current)
            current = []
    return sentences + [current] if current else sentences


def _breaks(text, tokens, i):
    """Whether a sentence ends after tokens[i] (the next token exists)."""
    end, (following, start, _) = tokens[i][2], tokens[i + 1]
    if text.count("\n", end, start) > 1:
        return True  # a blank line: only white space lies between two words
    if following in CLOSING and start == end:
        return False  # a closing quote or bracket right after this word still belongs to its sentence
    j = i
    while j > 0 and tokens[j][0] in CLOSING and tokens[j][1] == tokens[j - 1][2]:
        j -= 1  # back over the closing quotes and brackets right after the end mark
    last = tokens[j][0]
    if not (last in ENDS or set(last) == {"."} or set(last) <= {"!", "?"}):
        return False
    first = following[0]
    return first.isupper() or first.isdigit() or first in OPENING
