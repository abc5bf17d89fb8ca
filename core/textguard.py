"""Prompt text as users type it, made safe to show and to match against the banned words.

Two forms:

- :func:`clean` is what is stored and shown: control characters (NUL and friends), lone
  surrogates and invisible format characters (zero-width spaces, soft hyphens, bidi overrides,
  fillers) removed; joiners kept only inside a word or an emoji sequence, where they matter.
- :func:`fold` is what is matched: also without joiners and variation selectors, NFKC
  (full-width letters, ligatures), accents stripped from Latin, Greek and Cyrillic letters,
  casefolded, common Cyrillic and Greek look-alikes replaced by the Latin letters they imitate,
  and with runs of whitespace made one space. Banned words are folded the same way; a prompt is
  matched in each of :func:`fold_variants`.

Pure: no Discord, no I/O.
"""

from __future__ import annotations

import re
import unicodedata

# Whitespace controls that are kept (a prompt pasted over lines stays readable).
_KEPT_CONTROLS = frozenset("\t\n")
# Zero-width joiner and non-joiner: needed inside emoji sequences and some scripts' words.
_JOINERS = frozenset("\u200c\u200d")
# Blank "letters" and marks that render as nothing, though not of a format category.
_BLANKS = frozenset(
    "\u034f"  # combining grapheme joiner
    "\u115f\u1160\u3164\uffa0"  # Hangul fillers
    "\u2800"  # braille pattern blank
)
_VARIATION_SELECTORS = re.compile("[\ufe00-\ufe0f\U000e0100-\U000e01ef]")
_WHITESPACE = re.compile(r"\s+")

# Look-alikes of Latin letters in Cyrillic, Greek and Latin extensions, for text already
# casefolded: "nѕfw" (Cyrillic dze) folds to "nsfw". Capitals are folded to small letters first,
# so each capital counts as its small letter's look-alike (Cyrillic "Н" as "н", thus "h")...
_SMALL = str.maketrans(
    {
        # Cyrillic
        "а": "a", "в": "b", "г": "r", "е": "e", "ё": "e", "і": "i", "ї": "i", "ј": "j",
        "к": "k", "м": "m", "н": "h", "о": "o", "п": "n", "р": "p", "с": "c", "ѕ": "s",
        "т": "t", "у": "y", "х": "x", "ь": "b", "ү": "y", "ԁ": "d", "ԛ": "q", "ԝ": "w",
        "ӏ": "l", "һ": "h", "ҫ": "c",
        # Greek
        "α": "a", "β": "b", "γ": "y", "ε": "e", "η": "n", "ι": "i", "κ": "k", "μ": "u",
        "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ω": "w",
        # Latin letters that pass for plain ones
        "ı": "i", "ȷ": "j", "ɑ": "a", "ɡ": "g", "ɩ": "i", "ʏ": "y", "ɴ": "n", "ʀ": "r",
        "ꜱ": "s", "ᴀ": "a", "ᴄ": "c", "ᴅ": "d", "ᴇ": "e", "ᴋ": "k", "ᴍ": "m", "ᴏ": "o",
        "ᴘ": "p", "ᴛ": "t", "ᴜ": "u", "ᴠ": "v", "ᴡ": "w", "ᴢ": "z",
    }
)  # fmt: skip
# ...except where a capital imitates another letter than its small one does (Greek "Ν" passes
# for N, "ν" for v): text is folded a second time with these capitals read as Latin ones.
_CAPITALS = str.maketrans(
    {"Η": "H", "Μ": "M", "Ν": "N", "Υ": "Y", "Ζ": "Z", "Β": "B", "Κ": "K", "Τ": "T", "Χ": "X"}
)
# Accents are dropped from letters below this code point (Latin, IPA, Greek, Cyrillic), where
# "nšfw" is a disguise; other scripts' marks are part of their letters and are kept.
_STRIP_MARKS_BELOW = 0x0530


def is_invisible(char: str) -> bool:
    """A character that shows nothing: a control, a format character, a blank filler."""
    if char in _KEPT_CONTROLS:
        return False
    return unicodedata.category(char) in {"Cc", "Cf", "Cs"} or char in _BLANKS


def clean(text: str) -> str:
    """``text`` without control and invisible characters, for storing and showing."""
    out: list[str] = []
    for i, char in enumerate(text):
        if char in _JOINERS:
            after = text[i + 1] if i + 1 < len(text) else ""
            if out and _joinable(out[-1]) and after and _joinable(after):
                out.append(char)
        elif not is_invisible(char):
            out.append(char)
    return "".join(out)


def has_visible(text: str) -> bool:
    """Whether ``text`` has a letter, digit, punctuation mark or symbol that shows."""
    return any(
        unicodedata.category(c)[0] in "LNPS" and c not in _BLANKS and not is_invisible(c)
        for c in text
    )


def fold(text: str) -> str:
    """The form banned words are matched in (see the module's docstring)."""
    text = "".join(c for c in text if c not in _JOINERS and not is_invisible(c))
    text = _VARIATION_SELECTORS.sub("", text)
    text = _strip_marks(unicodedata.normalize("NFKC", text)).casefold().translate(_SMALL)
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def fold_variants(text: str) -> set[str]:
    """Every folded reading of ``text``: :func:`fold`, and again with capitals that imitate
    other Latin letters than their small forms do read as those ("ΝSFW" as "NSFW")."""
    return {fold(text), fold(text.translate(_CAPITALS))}


def _strip_marks(text: str) -> str:
    out: list[str] = []
    base = ""
    for char in unicodedata.normalize("NFD", text):
        if unicodedata.category(char) == "Mn":
            if base and ord(base) < _STRIP_MARKS_BELOW:
                continue
        else:
            base = char
        out.append(char)
    return unicodedata.normalize("NFC", "".join(out))


def _joinable(char: str) -> bool:
    return not char.isspace() and not is_invisible(char) and char not in _JOINERS
