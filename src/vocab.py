"""Character vocabulary and vectorised encoding.

The vocabulary is the text's distinct characters in code-point order, so the same text always
gives the same ids (the seed built it from a Python set, whose order changes between runs).
The newline policy travels with it, because ids only mean something under the same policy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src import fileio
from src.errors import KarnnaError


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
