"""The normalised form of a text: what "the same request" means for duplicates and for leakage between splits.

One definition for both its users: the GX suites flag a test text whose normalised form is in train
(``normalised_overlap_with`` in :mod:`adapter_registry.data.expectations`), and the demo data's ``clean`` stage
(``datagen/stages.py``) drops repeats by it, so the demo splits pass that check by construction.
"""

from __future__ import annotations

import re
import unicodedata

_NOT_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalise_text(text: str) -> str:
    """The form two texts are compared in for near-duplicates and leakage: NFKC, case-folded, no punctuation."""
    return " ".join(_NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split())
