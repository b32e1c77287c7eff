"""Typed configuration: one dataclass per params.yaml section, strictly checked.

The params.yaml key *is* the dataclass field, the MLflow param name (``section.key``), the
Optuna parameter and the ``dvc exp run -S section.key=...`` path. Unknown keys, wrong types
and out-of-range values are rejected with a one-line message naming the file and the key.
This module never opens params.yaml itself: the entry points read the YAML and pass a dict.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from src.errors import KarnnaError


@dataclass
class DataConfig:
    # None: ../shared/data/anna.txt beside the checkout if present, else Project Gutenberg.
    path: Optional[str] = None
    # Fetched once when no path is set and no copy lies beside the checkout.
    url: str = "https://www.gutenberg.org/cache/epub/1399/pg1399.txt"
    # Expected SHA-256 of the corpus as found/fetched (after the Gutenberg licence is stripped).
    # None: not checked (a file of your own); see docs/DESIGN.md for the known checksums.
    sha256: Optional[str] = None
    # "lf": CRLF and lone CR become LF; "keep": the bytes' newlines are kept as they are.
    newline: Literal["lf", "keep"] = "lf"
    # Use only the first max_chars characters (quick experiments, tests). None: all.
    max_chars: Optional[int] = None

    def validate(self, where: str) -> None:
        if self.max_chars is not None and self.max_chars < 2:
            raise _range(where, "max_chars", self.max_chars, "at least 2 (or null for the whole text)")
        if self.sha256 is not None and not _is_hex(self.sha256, 64):
            raise _range(where, "sha256", self.sha256, "64 hex digits (or null)")


@dataclass
class SplitConfig:
    # Contiguous fractions of the encoded text: train | val | test, in that order.
    val_fraction: float = 0.1
    test_fraction: float = 0.0

    def validate(self, where: str) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise _range(where, "val_fraction", self.val_fraction, "strictly between 0 and 1")
        if not 0.0 <= self.test_fraction < 1.0:
            raise _range(where, "test_fraction", self.test_fraction, "in [0, 1)")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise KarnnaError(
                f"{where}: val_fraction + test_fraction = {self.val_fraction + self.test_fraction:g} "
                "leaves under 10% for training; lower one of them"
            )


@dataclass
class ModelConfig:
    embedding_dim: int = 64
    lstm_size: int = 384
    num_layers: int = 2
    dropout: float = 0.1

    def validate(self, where: str) -> None:
        for key in ("embedding_dim", "lstm_size", "num_layers"):
            if getattr(self, key) < 1:
                raise _range(where, key, getattr(self, key), "a positive integer")
        if not 0.0 <= self.dropout < 1.0:
            raise _range(where, "dropout", self.dropout, "in [0, 1) (0.5 keeps half the units)")


@dataclass
class TrainConfig:
    batch_size: int = 32
    seq_len: int = 100
    lr: float = 3.0e-3
    # "cosine": decay from lr to min_lr over the run after warmup; "none": constant lr.
    lr_decay: Literal["none", "cosine"] = "cosine"
    min_lr: float = 3.0e-4
    warmup_steps: int = 0
    grad_clip: float = 5.0
    weight_decay: float = 0.0
    epochs: int = 20
    # Stop after this many optimiser steps even if epochs remain. None: run all epochs.
    max_steps: Optional[int] = None
    # Validate every eval_interval steps (and at the end).
    eval_interval: int = 500
    seed: int = 1234
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # "auto": bf16 autocast where the device has fast bf16 matmuls, else fp32.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # Torch intra-op threads on CPU. 0: torch's default (one per core).
    num_threads: int = 0
    # Refresh the progress bar's loss every this many steps (each refresh costs a host sync).
    log_interval: int = 25
    # Write models/last.pt with everything needed to resume exactly every this many steps.
    checkpoint_interval: int = 250
    # "auto": continue an unfinished run from models/last.pt when it was made with the same
    # params and data, else start fresh (saying why); "never": always start fresh;
    # "require": resume or fail.
    resume: Literal["auto", "never", "require"] = "auto"

    def validate(self, where: str) -> None:
        for key in ("batch_size", "seq_len", "epochs", "eval_interval", "log_interval", "checkpoint_interval"):
            if getattr(self, key) < 1:
                raise _range(where, key, getattr(self, key), "a positive integer")
        if self.max_steps is not None and self.max_steps < 1:
            raise _range(where, "max_steps", self.max_steps, "a positive integer or null")
        for key in ("warmup_steps", "num_threads"):
            if getattr(self, key) < 0:
                raise _range(where, key, getattr(self, key), "0 or more")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise _range(where, "lr", self.lr, "a positive number such as 3.0e-3")
        if not 0 <= self.min_lr <= self.lr:
            raise _range(where, "min_lr", self.min_lr, f"between 0 and train.lr ({self.lr:g})")
        if not self.grad_clip > 0:
            raise _range(where, "grad_clip", self.grad_clip, "a positive number (5.0 is the seed's)")
        if self.weight_decay < 0:
            raise _range(where, "weight_decay", self.weight_decay, "0 or more")


@dataclass
class EvaluateConfig:
    # The validation stream is cut into `rows` contiguous rows, each read from a zero state in
    # chunks of chunk_len with the state carried: fixed here, so scores never depend on train.*.
    rows: int = 16
    chunk_len: int = 500

    def validate(self, where: str) -> None:
        for key in ("rows", "chunk_len"):
            if getattr(self, key) < 1:
                raise _range(where, key, getattr(self, key), "a positive integer")


@dataclass
class SampleConfig:
    prime: str = "Far"
    length: int = 2000
    # 0: sample from the whole distribution; 1: greedy.
    top_k: int = 5
    temperature: float = 1.0
    seed: int = 1234

    def validate(self, where: str) -> None:
        if self.prime == "":
            raise _range(where, "prime", "''", 'a non-empty string such as "Far"')
        if self.length < 1:
            raise _range(where, "length", self.length, "a positive number of characters")
        if self.top_k < 0:
            raise _range(where, "top_k", self.top_k, "0 (no cut), 1 (greedy) or more")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise _range(where, "temperature", self.temperature, "a positive number")


@dataclass
class TrackingConfig:
    enabled: bool = True
    experiment: str = "karnna"
    # Registered model name; the alias "champion" follows the best validation loss.
    model_name: str = "karnna-char-lstm"
    # Log the train loss to MLflow every this many steps (batched, not one call per step).
    log_every: int = 10

    def validate(self, where: str) -> None:
        if not self.experiment:
            raise _range(where, "experiment", "''", "a non-empty experiment name")
        if not self.model_name:
            raise _range(where, "model_name", "''", "a non-empty model name")
        if self.log_every < 1:
            raise _range(where, "log_every", self.log_every, "a positive integer")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def flat(self) -> dict[str, Any]:
        """Every value under its dotted params.yaml name, e.g. {"train.lr": 0.003, ...}."""
        return {
            f"{section.name}.{f.name}": getattr(getattr(self, section.name), f.name)
            for section in dataclasses.fields(self)
            for f in dataclasses.fields(getattr(self, section.name))
        }


@dataclass
class TuneConfig:
    """The search of `python -m src.tune`; the rest of params.yaml is the fixed base.

    Each dimension is named by the params.yaml key it sets (lstm_size sets model.lstm_size).
    """

    study_name: str = "karnna"
    # None: an Optuna journal file tune/journal.log, safe for several processes on one machine.
    storage: Optional[str] = None
    n_trials: int = 20
    # Every trial trains on this many characters (so seq_len in the space does not change it).
    budget_chars: int = 1_000_000
    evals_per_trial: int = 5
    pruner: Literal["median", "hyperband", "none"] = "median"
    lstm_size: list[int] = field(default_factory=lambda: [128, 256, 384, 512])
    num_layers: list[int] = field(default_factory=lambda: [2, 3])
    # [low, high): sampled uniformly.
    dropout: list[float] = field(default_factory=lambda: [0.0, 0.8])
    # [low, high], log scale; None: train.lr from the base.
    lr: Optional[list[float]] = None
    # Choices; None: train.seq_len from the base.
    seq_len: Optional[list[int]] = None
    # Skip configurations with more parameters per training character (Karpathy: they overfit).
    max_params_per_char: Optional[float] = None
    # Start the study with the seed notebook's configuration, to show how far the search got past it.
    enqueue_seed: bool = True
    seed: int = 1234

    def validate(self, where: str) -> None:
        for key in ("n_trials", "budget_chars", "evals_per_trial"):
            if getattr(self, key) < 1:
                raise _range(where, key, getattr(self, key), "a positive integer")
        if any(v < 1 for v in self.lstm_size):
            raise _range(where, "lstm_size", self.lstm_size, "positive integers")
        if any(v < 1 for v in self.num_layers):
            raise _range(where, "num_layers", self.num_layers, "positive integers, e.g. [2, 3]")
        if len(self.dropout) != 2 or not 0.0 <= self.dropout[0] < self.dropout[1] < 1.0:
            raise _range(where, "dropout", self.dropout, "[low, high] with 0 <= low < high < 1")
        if self.lr is not None and (len(self.lr) != 2 or not 0 < self.lr[0] < self.lr[1]):
            raise _range(where, "lr", self.lr, "[low, high] with 0 < low < high, e.g. [1.0e-3, 1.0e-2]")
        if self.seq_len is not None and any(v < 1 for v in self.seq_len):
            raise _range(where, "seq_len", self.seq_len, "positive integers")
        if self.max_params_per_char is not None and self.max_params_per_char <= 0:
            raise _range(where, "max_params_per_char", self.max_params_per_char, "a positive number or null")


# Sections that may be present in params.yaml but are read by other tools (e.g. src.tune).
FOREIGN_SECTIONS = ("tune",)


def tune_config_from_dict(raw: Any, source: str = "params.yaml") -> TuneConfig:
    section = raw.get("tune") if isinstance(raw, dict) else None
    return section_from_dict(TuneConfig, section, f"{source}: tune")


def with_overrides(cfg: Config, overrides: dict[str, Any], source: str = "overrides") -> Config:
    """A new, validated Config with dotted keys replaced, e.g. {"model.lstm_size": 256}."""
    raw = dataclasses.asdict(cfg)
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if section not in raw or name not in raw[section]:
            raise KarnnaError(f"{source}: unknown parameter {key!r}")
        raw[section][name] = value
    return config_from_dict(raw, source)


def config_from_dict(raw: Any, source: str = "params.yaml") -> Config:
    """Build and validate a Config from parsed YAML; missing keys take the defaults."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise KarnnaError(f"{source}: expected a mapping of sections (data, model, train, ...), got {_kind(raw)}")
    sections = {f.name: f for f in dataclasses.fields(Config)}
    unknown = [k for k in raw if k not in sections and k not in FOREIGN_SECTIONS]
    if unknown:
        raise KarnnaError(
            f"{source}: unknown section {unknown[0]!r}; known sections: {', '.join(sections)}"
        )
    built = {}
    for name, f in sections.items():
        cls = f.default_factory  # type: ignore[misc]
        built[name] = section_from_dict(cls, raw.get(name), f"{source}: {name}")
    return Config(**built)


def section_from_dict(cls: type, raw: Any, where: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise KarnnaError(f"{where}: expected a mapping of keys, got {_kind(raw)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            close = [n for n in names if n.startswith(str(key)[:3])]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise KarnnaError(f"{where}.{key}: unknown key{hint}; known keys: {', '.join(names)}")
    values = {key: _coerce(raw[key], hints[key], f"{where}.{key}") for key in raw}
    obj = cls(**values)
    obj.validate(where)
    return obj


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, where)
    if origin is Literal:
        if value not in args:
            choices = " | ".join(repr(a) for a in args)
            raise KarnnaError(f"{where}: {value!r} is not one of {choices}")
        return value
    if origin is list:
        (inner,) = args
        if not isinstance(value, list) or not value:
            raise KarnnaError(f"{where}: expected a non-empty list, e.g. [128, 256], got {_kind(value)} {value!r}")
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise KarnnaError(f"{where}: expected true or false, got {_kind(value)} {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise KarnnaError(f"{where}: expected an integer, got {_kind(value)} {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fix = ""
            if isinstance(value, str) and _looks_numeric(value):
                fix = (
                    f"; YAML reads {value} as a string because it has no dot in the mantissa:"
                    f" write {_yaml_float(value)}"
                )
            raise KarnnaError(f"{where}: expected a number, got {_kind(value)} {value!r}{fix}")
        if not math.isfinite(float(value)):
            raise KarnnaError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise KarnnaError(f"{where}: expected a string, got {_kind(value)} {value!r}; quote it")
        return value
    raise TypeError(f"unsupported config type {hint!r} at {where}")  # a bug here, not bad input


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _yaml_float(text: str) -> str:
    mantissa, _, exponent = text.lower().partition("e")
    if "." not in mantissa:
        mantissa += ".0"
    return f"{mantissa}e{exponent}" if exponent else mantissa


def _is_hex(text: str, length: int) -> bool:
    return len(text) == length and all(c in "0123456789abcdefABCDEF" for c in text)


def _kind(value: Any) -> str:
    return {str: "string", int: "integer", float: "number", bool: "boolean", list: "list", dict: "mapping"}.get(
        type(value), type(value).__name__
    )


def _range(where: str, key: str, value: Any, expected: str) -> KarnnaError:
    return KarnnaError(f"{where}.{key}: {value!r} is out of range; expected {expected}")
