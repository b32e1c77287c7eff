"""Character vocabulary and vectorised encoding.

The vocabulary is the text's distinct characters in code-point order, so the same text always
gives the same ids (the seed built it from a Python set, whose order changes between runs).
The newline policy travels with it, because ids only mean something under the same policy.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.utils import fileio
from src.utils.errors import KarnnaError

# (what names a prime, how to give another: {} is a suggestion, shell-quoted) for encode_prime.
PRIME_ARG = ("prime", "use characters the model was trained on, e.g. {}")
PRIME_OPTION = ("--prime", "use characters the model was trained on, e.g. --prime {}")
# sample.prime of params.yaml, for the sample stage and the train stage's check before training.
# dvc's -S parses its value as a Hydra override, which takes letters beyond ASCII only quoted.
PRIME_PARAM = (
    "params.yaml: sample.prime",
    "set a prime from your corpus, e.g. `dvc exp run -S {}`",
    'sample.prime="{}"',
)


@dataclass(frozen=True)
class Vocab:
    chars: tuple[str, ...]
    newline: str = "lf"

    @property
    def size(self) -> int:
        return len(self.chars)

    @property
    def dtype(self) -> np.dtype:
        """The smallest unsigned integer type that holds every id."""
        return np.dtype(np.uint8 if self.size <= 256 else np.uint16 if self.size <= 65536 else np.uint32)

    def encode(self, text: str) -> np.ndarray:
        """Text -> ids, vectorised: code points are looked up in the sorted vocabulary with
        searchsorted (the 2 MB novel takes tens of milliseconds, not a Python loop per character)."""
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        table = np.fromiter((ord(c) for c in self.chars), dtype=np.uint32, count=self.size)
        ids = np.searchsorted(table, codes)
        ids_clipped = np.minimum(ids, self.size - 1)
        bad = table[ids_clipped] != codes
        if bad.any():
            missing = sorted({chr(c) for c in codes[bad]})
            raise KarnnaError(
                f"characters not in the vocabulary: {', '.join(repr(c) for c in missing[:10])}"
                f"{' ...' if len(missing) > 10 else ''}; use only characters the model was trained on"
            )
        return ids.astype(self.dtype)

    def missing(self, text: str) -> list[str]:
        """The characters of `text` that are not in the vocabulary, sorted."""
        return sorted(set(text) - set(self.chars))

    def encode_prime(self, prime: str, names: tuple[str, ...] = PRIME_ARG, text: str = "") -> np.ndarray:
        """A prime's ids. A prime the vocabulary cannot encode is one line naming it (names[0]),
        its missing characters and a prime to use instead (names[1]), taken from `text` (say the
        corpus) or else from the vocabulary itself; names[2], if any, formats the suggestion."""
        missing = self.missing(prime)
        if missing:
            where, fix, arg = (*names, "{}")[:3]
            shown = ", ".join(repr(c) for c in missing[:10]) + (" ..." if len(missing) > 10 else "")
            example = shlex.quote(arg.format(self.suggest_prime(text)))
            raise KarnnaError(f"{where} {prime!r}: characters not in the vocabulary: {shown}; {fix.format(example)}")
        if not prime:
            raise KarnnaError(f"{names[0]} is empty; {names[1].format(shlex.quote(self.suggest_prime(text)))}")
        return self.encode(prime)

    def suggest_prime(self, text: str = "", prefer: str = "") -> str:
        """A prime this vocabulary encodes: `prefer` if it does, else the first word of `text` (a
        run of letters; its first 4 past 12, as in a script without spaces), else the
        vocabulary's first 3 letters."""
        if prefer and not self.missing(prefer):
            return prefer
        known = set(self.chars)
        words = "".join(c if c.isalpha() and c in known else " " for c in text[:10_000]).split()
        if words:
            return words[0] if len(words[0]) <= 12 else words[0][:4]
        letters = [c for c in self.chars if c.isalpha()]
        return "".join(letters[:3]) or next((c for c in self.chars if not c.isspace()), self.chars[0])

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def to_dict(self) -> dict:
        return {"chars": list(self.chars), "newline": self.newline, "size": self.size}

    @classmethod
    def from_dict(cls, d: dict, source: str = "vocabulary") -> "Vocab":
        try:
            chars = tuple(d["chars"])
            newline = d["newline"]
        except (KeyError, TypeError):
            raise KarnnaError(
                f"{source}: not a karnna vocabulary (needs 'chars' and 'newline'); rerun the encode stage"
            ) from None
        if list(chars) != sorted(set(chars)) or not all(isinstance(c, str) and len(c) == 1 for c in chars):
            raise KarnnaError(
                f"{source}: 'chars' must be distinct single characters in code-point order; rerun the encode stage"
            )
        return cls(chars=chars, newline=newline)

    def save(self, path: Path) -> None:
        fileio.write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> "Vocab":
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise KarnnaError(f"{path}: vocabulary not found; run `dvc repro encode` first") from None
        except json.JSONDecodeError as exc:
            raise KarnnaError(f"{path}: not valid JSON ({exc}); rerun `dvc repro encode`") from None
        return cls.from_dict(d, str(path))


def build_vocab(text: str, newline: str) -> Vocab:
    if not text:
        raise KarnnaError("the corpus is empty; point data.path at a non-empty UTF-8 text")
    codes = np.unique(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32))
    return Vocab(chars=tuple(chr(c) for c in codes), newline=newline)
