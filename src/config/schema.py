"""Typed configuration: one pydantic model per params.yaml section, declared, not hand-coerced.

The params.yaml key *is* the field, the MLflow param name (``section.key``), the Optuna parameter
and the ``dvc exp run -S section.key=...`` path. The defaults here are the only ones:
tests/test_config.py checks that params.yaml spells out exactly these values. Every section is
strict (``extra="forbid"``, no coercion but int -> float, ``Literal`` choices, ``Field`` bounds);
a ``ValidationError`` becomes one line naming the file, the key, the bad value and the fix.
This module never opens params.yaml itself: the entry points read the YAML and pass a dict.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from src.config.messages import CrossField, kind_of, one_line
from src.model.cells import CELLS
from src.model.regularisers import DROPOUT_KINDS
from src.utils.errors import KarnnaError


def _expect(text: str) -> dict:
    """What a bad value's message says is expected (the fix), kept in the field's schema."""
    return {"json_schema_extra": {"expect": text}}


class Section(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)


PositiveInt = Annotated[int, Field(ge=1, **_expect("a positive integer"))]
CellName = Literal[tuple(CELLS)]  # the registry's names, in its order


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise CrossField(key, f"{value!r} is out of range; expected {expected}")


class DataConfig(Section):
    # None: ../shared/data/anna.txt beside the checkout if present, else Project Gutenberg.
    path: Optional[str] = None
    # Fetched once when no path is set and no copy lies beside the checkout.
    url: str = "https://www.gutenberg.org/cache/epub/1399/pg1399.txt"
    # "strip": the corpus is the book alone, a Project Gutenberg licence header or footer (the
    # text before "*** START OF" and from "*** END OF") left out, wherever the text comes from;
    # "keep": the file as it is.
    licence: Literal["strip", "keep"] = "strip"
    # Expected SHA-256 of data/corpus.txt, the corpus as the licence policy leaves it.
    # None: not checked (a file of your own); see docs/DESIGN.md for the known checksums.
    sha256: Optional[str] = Field(None, pattern=r"^[0-9a-fA-F]{64}$", **_expect("64 hex digits (or null)"))
    # "lf": CRLF and lone CR become LF; "keep": the bytes' newlines are kept as they are.
    newline: Literal["lf", "keep"] = "lf"
    # Use only the first max_chars characters (quick experiments, tests). None: all.
    max_chars: Optional[int] = Field(None, ge=2, **_expect("at least 2 (or null for the whole text)"))


class SplitConfig(Section):
    # Contiguous fractions of the encoded text: train | val | test, in that order.
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0, **_expect("strictly between 0 and 1"))
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0, **_expect("in [0, 1)"))

    @model_validator(mode="after")
    def _leaves_training_data(self):
        total = self.val_fraction + self.test_fraction
        _check(total < 0.9, "val_fraction + test_fraction", round(total, 6), "under 0.9 (10% left for training)")
        return self


class ModelConfig(Section):
    # The recurrent cell: one of the names in src/model/cells.py's CELLS.
    cell: CellName = "lstm"
    embedding_dim: PositiveInt = 64
    lstm_size: PositiveInt = 512
    num_layers: PositiveInt = 2
    dropout: float = Field(0.25, ge=0.0, lt=1.0, **_expect("in [0, 1) (0.5 keeps half the units)"))
    # How model.dropout draws its masks (between layers and on the last layer's output):
    # "standard": a fresh mask per element and time step; "locked": one mask per sequence row,
    # the same at every time step (variational dropout, as AWD-LSTM).
    dropout_kind: Literal[DROPOUT_KINDS] = "standard"
    # DropConnect on each layer's hidden-to-hidden weights, one mask per batch; 0: off.
    weight_drop: float = Field(0.0, ge=0.0, lt=1.0, **_expect("in [0, 1) (0.0 is off; 1 would drop every weight)"))
    # Whole characters dropped from the embedding table, one mask per batch; 0: off.
    embed_dropout: float = Field(0.0, ge=0.0, lt=1.0, **_expect("in [0, 1) (0.0 is off; 1 would drop every character)"))


class TrainConfig(Section):
    batch_size: PositiveInt = 32
    seq_len: PositiveInt = 100
    lr: float = Field(1.7e-3, gt=0.0, **_expect("a positive number such as 1.7e-3"))
    # "cosine": decay from lr to min_lr over the run after warmup; "none": constant lr.
    lr_decay: Literal["none", "cosine"] = "cosine"
    min_lr: float = Field(3.0e-4, ge=0.0, **_expect("between 0 and train.lr"))
    warmup_steps: int = Field(0, ge=0, **_expect("0 or more"))
    grad_clip: float = Field(5.0, gt=0.0, **_expect("a positive number (5.0 is the seed's)"))
    weight_decay: float = Field(0.0, ge=0.0, **_expect("0 or more"))
    epochs: PositiveInt = 20
    # Stop after this many optimiser steps even if epochs remain (the CPU budget). None: all epochs.
    max_steps: Optional[int] = Field(5000, ge=1, **_expect("a positive integer or null"))
    # Validate every eval_interval steps (and at the end).
    eval_interval: PositiveInt = 500
    seed: int = 1234
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # "auto": bf16 autocast where the device has fast bf16 matmuls, else fp32.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # Torch intra-op threads on CPU, set by the entry point. "auto": this machine's cores shared
    # among the karnna trainings running on it (src/utils/cores.py); 0: torch's default (every
    # core); N: exactly N.
    num_threads: Union[Literal["auto"], Annotated[int, Field(ge=0)]] = Field(
        "auto", **_expect('"auto", 0 (torch\'s default) or a number of threads')
    )
    # Refresh the progress bar's loss every this many steps (each refresh costs a host sync).
    log_interval: PositiveInt = 25
    # Write models/last.pt with everything needed to resume exactly every this many steps.
    checkpoint_interval: PositiveInt = 250
    # "auto": continue an unfinished run from models/last.pt when it was made with the same
    # params and data, else start fresh (saying why); "never": always start fresh;
    # "require": resume or fail.
    resume: Literal["auto", "never", "require"] = "auto"
    # Characters each validation writes after sample.prime (sample.top_k, .temperature, .seed),
    # printed under the validation line and kept in the MLflow run (samples/); 0: none.
    sample_chars: int = Field(200, ge=0, **_expect("0 (no samples) or a number of characters, e.g. 200"))
    # Weight averaging (src/training/averaging.py): validations, best.pt and so the served model
    # use an exponential moving average of the weights with this decay; None: off (the raw weights).
    ema_decay: Optional[float] = Field(
        None, gt=0.0, lt=1.0, **_expect("strictly between 0 and 1, e.g. 0.999, or null (no averaging)")
    )
    # The average folds in the weights of the steps after this one; until then it is the weights.
    ema_start: int = Field(0, ge=0, **_expect("0 or more, below train.max_steps"))

    @model_validator(mode="after")
    def _min_lr_below_lr(self):
        _check(self.min_lr <= self.lr, "min_lr", self.min_lr, f"between 0 and train.lr ({self.lr:g})")
        return self

    @model_validator(mode="after")
    def _ema_starts_before_the_end(self):
        if self.ema_decay is not None and self.max_steps is not None:
            expected = f"below train.max_steps ({self.max_steps}), or nothing is averaged"
            _check(self.ema_start < self.max_steps, "ema_start", self.ema_start, expected)
        return self


class EvaluateConfig(Section):
    # The validation stream is cut into `rows` contiguous rows, each read from a zero state in
    # chunks of chunk_len with the state carried: fixed here, so scores never depend on train.*.
    rows: PositiveInt = 16
    chunk_len: PositiveInt = 500
    # Training's validations before the last score this prefix of the validation split, and
    # compete for best.pt on it; the last validation and the evaluate stage score the whole split
    # (src/training/interim.py). The default exceeds the novel's 198,522-character split. None: whole.
    interim_chars: Optional[int] = Field(
        200_000, ge=2, **_expect("at least 2 characters, or null (every validation scores the whole split)")
    )


# Sampling temperatures that do something: at 0.001 a trained model's text was already the greedy
# one, at 1000 within 0.2% of uniform; further out only the arithmetic changes: fp32 and bf16
# logits / T overflow to inf below about 1e-37 (NaN draws), and fp32 rounds to exactly uniform
# above about 1e9 (README, "Sampling"). src.sample refuses the same values.
TEMPERATURES = (1e-3, 1e3)
TEMPERATURE_EXPECT = "a number from 0.001 to 1000, e.g. 0.8 (1.0 keeps the model's distribution)"
SEED_MAX = 2**64 - 1  # torch's seeds: a negative one would draw seed + 2**64's text
SEED_EXPECT = f"an integer from 0 to {SEED_MAX}, e.g. 1234"


class SampleConfig(Section):
    prime: str = Field("Far", min_length=1, **_expect('a non-empty string such as "Far"'))
    length: int = Field(2000, ge=1, **_expect("a positive number of characters"))
    # 0: sample from the whole distribution; 1: greedy.
    top_k: int = Field(5, ge=0, **_expect("0 (no cut), 1 (greedy) or more"))
    temperature: float = Field(1.0, ge=TEMPERATURES[0], le=TEMPERATURES[1], **_expect(TEMPERATURE_EXPECT))
    seed: int = Field(1234, ge=0, le=SEED_MAX, **_expect(SEED_EXPECT))


class TrackingConfig(Section):
    enabled: bool = True
    experiment: str = Field("karnna", min_length=1, **_expect("a non-empty experiment name"))
    # Registered model name; the register stage moves its alias "champion" (src/serving/registry.py).
    model_name: str = Field("karnna-char-lstm", min_length=1, **_expect("a non-empty model name"))
    # Log the train loss to MLflow every this many steps (batched, not one call per step).
    log_every: PositiveInt = 10
    # MLflow's own system metrics (system/cpu_utilization_percentage, memory, disk, network; GPU
    # where nvidia-ml-py finds one) in the training run, every 10 s (MLflow's default).
    system_metrics: bool = False


class Config(Section):
    data: DataConfig = Field(default_factory=DataConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    def flat(self) -> dict[str, Any]:
        """Every value under its dotted params.yaml name, e.g. {"train.lr": 0.003, ...}."""
        return {
            f"{section}.{key}": value for section, values in self.model_dump().items() for key, value in values.items()
        }


class Dimension(Section):
    """One search dimension of `python -m src.tune`: `choices`, or a `low`..`high` range (both
    ends included; on a log scale when `log`). Integers for an integer param give integer trials."""

    choices: Optional[list[Union[StrictBool, StrictInt, StrictFloat, StrictStr]]] = Field(
        None, min_length=1, **_expect("a non-empty list of values, e.g. [128, 256]")
    )
    low: Optional[Union[StrictInt, StrictFloat]] = None
    high: Optional[Union[StrictInt, StrictFloat]] = None
    log: bool = False

    @model_validator(mode="after")
    def _choices_or_range(self):
        ranged = self.low is not None or self.high is not None
        if self.choices is not None:
            _check(not ranged and not self.log, "choices", self.choices, "either choices or low/high (log), not both")
            return self
        _check(self.low is not None and self.high is not None, "low", self.low, "choices: [...], or both low and high")
        _check(self.low < self.high, "high", self.high, f"above low ({self.low:g}): the range is empty or inverted")
        _check(not self.log or self.low > 0, "low", self.low, "above 0 on a log scale")
        return self


def _dim(**kw) -> Dimension:
    return Dimension(**kw)


class TuneConfig(Section):
    """The search of `python -m src.tune`; the rest of params.yaml is the fixed base.

    `space` is the table of search dimensions, each named by the params.yaml key it sets
    (model.lstm_size); adding a dimension is one entry (src/tuning/space.py reads it).
    """

    study_name: str = Field("karnna", min_length=1, **_expect("a non-empty study name"))
    # None: an Optuna journal file tune/journal.log, safe for several processes on one machine.
    storage: Optional[str] = None
    n_trials: PositiveInt = 20
    # Training characters of a trial that runs to the end. None: the pipeline's own budget,
    # train.max_steps x batch_size x seq_len, so the best trial's score is what `dvc repro` gets.
    budget_chars: Optional[int] = Field(None, ge=1, **_expect("a positive integer or null (the pipeline's budget)"))
    # Validations on a geometric ladder: budget / reduction_factor^(rungs-1), ..., budget / 3, budget.
    rungs: PositiveInt = 3
    reduction_factor: int = Field(3, ge=2, **_expect("an integer of at least 2"))
    # Validations before the last score the first eval_chars characters of the validation split
    # (the same for every trial); the last one scores the whole split. None: always the whole split.
    eval_chars: Optional[int] = Field(50_000, ge=2, **_expect("at least 2 characters, or null (the whole split)"))
    # halving: successive halving on the ladder (the best 1/reduction_factor go on).
    pruner: Literal["halving", "hyperband", "median", "none"] = "halving"
    space: dict[str, Dimension] = Field(
        default_factory=lambda: {
            "model.lstm_size": _dim(choices=[128, 256, 384, 512]),
            "model.num_layers": _dim(choices=[1, 2, 3]),
            "model.dropout": _dim(low=0.0, high=0.6),
            "train.lr": _dim(low=1.0e-3, high=1.0e-2, log=True),
            "model.cell": _dim(choices=["lstm", "gru", "rnn"]),
        }
    )
    # Skip configurations with more parameters per training character (Karpathy: they overfit).
    max_params_per_char: Optional[float] = Field(None, gt=0.0, **_expect("a positive number or null"))
    # First trials: the seed notebook's recipe and params.yaml's own values, each restricted to
    # the dimensions searched, so the table shows whether the search beat them.
    enqueue: list[Literal["seed_recipe", "defaults"]] = ["seed_recipe", "defaults"]
    seed: int = 1234


# Sections that may be present in params.yaml but are read by other tools (e.g. src.tune).
FOREIGN_SECTIONS = ("tune",)


def config_from_dict(raw: Any, source: str = "params.yaml") -> Config:
    """Build and validate a Config from parsed YAML; missing keys take the defaults."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise KarnnaError(f"{source}: expected a mapping of sections (data, model, train, ...), got {kind_of(raw)}")
    raw = {k: ({} if v is None else v) for k, v in raw.items() if k not in FOREIGN_SECTIONS}
    return _validate(Config, raw, source)


def tune_config_from_dict(raw: Any, source: str = "params.yaml") -> TuneConfig:
    section = raw.get("tune") if isinstance(raw, dict) else None
    return section_from_dict(TuneConfig, section, f"{source}: tune")


def section_from_dict(cls: type[Section], raw: Any, where: str) -> Any:
    """One section (e.g. TuneConfig) from a mapping; `where` ("params.yaml: tune") names it in messages."""
    source, _, prefix = where.rpartition(": ")
    return _validate(cls, {} if raw is None else raw, source, prefix)


def with_overrides(cfg: Section, overrides: dict[str, Any], source: str = "overrides") -> Any:
    """A new, validated config with dotted keys replaced, e.g. {"model.lstm_size": 256}."""
    raw = cfg.model_dump()
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        target = raw.get(section) if section else raw
        if not isinstance(target, dict) or name not in target:
            raise KarnnaError(f"{source}: unknown parameter {key!r}")
        target[name] = value
    return _validate(type(cfg), raw, source)


def _validate(cls: type[Section], raw: Any, source: str, prefix: str = "") -> Any:
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        raise KarnnaError(one_line(cls, exc.errors(), source, prefix, top_level=cls is Config)) from None
