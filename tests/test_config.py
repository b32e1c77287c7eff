import pytest
import yaml

from src.config.schema import (
    Config,
    TuneConfig,
    config_from_dict,
    section_from_dict,
    tune_config_from_dict,
    with_overrides,
)
from src.utils.errors import KarnnaError
from tests.conftest import REPO


def test_repo_params_yaml_is_valid_and_complete():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    cfg = config_from_dict(raw)
    # Every field of every section is spelled out in params.yaml, so `dvc exp run -S` finds it.
    for key in Config().flat():
        section, name = key.split(".")
        assert name in raw[section], f"params.yaml lacks {key}"
    assert cfg.sample.prime == "Far" and cfg.sample.length == 2000 and cfg.sample.top_k == 5


def test_params_yaml_holds_exactly_the_schema_defaults():
    """One source of defaults: the schema's; params.yaml, the user's file, spells them out."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert config_from_dict(raw) == Config()
    assert tune_config_from_dict(raw) == TuneConfig()
    assert set(raw["tune"]) == set(TuneConfig.model_fields)


def test_defaults_when_sections_are_missing():
    assert config_from_dict({}) == Config()


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"train": {"lr": "1e-3"}}, r"train\.lr: expected a number, got string '1e-3'.*write 1\.0e-3"),
        ({"model": {"dropout": 1.0}}, r"model\.dropout: 1\.0 is out of range; expected in \[0, 1\)"),
        ({"model": {"lstm_size": 0}}, r"model\.lstm_size: 0 is out of range"),
        ({"model": {"lstm_sise": 10}}, r"model\.lstm_sise: unknown key \(did you mean 'lstm_size'\?\)"),
        ({"trian": {"lr": 0.1}}, r"unknown section 'trian'"),
        ({"train": {"batch_size": 3.5}}, r"train\.batch_size: expected an integer"),
        ({"train": {"batch_size": True}}, r"train\.batch_size: expected an integer"),
        ({"train": {"lr_decay": "linear"}}, r"train\.lr_decay: 'linear' is not one of 'none' \| 'cosine'"),
        ({"tracking": {"enabled": "yes please"}}, r"tracking\.enabled: expected true or false"),
        ({"split": {"val_fraction": 0.0}}, r"split\.val_fraction: 0\.0 is out of range"),
        ({"sample": {"length": 0}}, r"sample\.length: 0 is out of range"),
        ({"train": {"min_lr": 1.0}}, r"train\.min_lr"),
        ({"model": "big"}, r"model: expected a mapping"),
        # strict: no silent coercion
        ({"train": {"batch_size": 32.0}}, r"train\.batch_size: expected an integer, got number 32\.0"),
        ({"train": {"batch_size": "32"}}, r"train\.batch_size: expected an integer, got string '32'"),
        ({"model": {"dropout": ".nan"}}, r"model\.dropout: expected a number"),
        ({"train": {"lr": float("inf")}}, r"train\.lr: expected a finite number"),
        ({"sample": {"prime": 7}}, r"sample\.prime: expected a string, got integer 7; quote it"),
        ({"data": {"sha256": "abc"}}, r"data\.sha256: 'abc' is out of range; expected 64 hex digits"),
        (
            {"split": {"val_fraction": 0.5, "test_fraction": 0.45}},
            r"split\.val_fraction \+ test_fraction: .*under 0\.9",
        ),
        ({"train": {"max_steps": 0}}, r"train\.max_steps: 0 is out of range; expected a positive integer or null"),
        # temperatures whose arithmetic gives garbage (NaN draws) or nothing new (greedy, uniform)
        (
            {"sample": {"temperature": float("nan")}},
            r"sample\.temperature: .* nan; use a number from 0\.001 to 1000, e\.g\. 0\.8",
        ),
        ({"sample": {"temperature": float("inf")}}, r"sample\.temperature: .* inf; use a number from 0\.001 to 1000"),
        (
            {"sample": {"temperature": 1e308}},
            r"sample\.temperature: 1e\+308 is out of range; expected a number from 0\.001 to 1000",
        ),
        (
            {"sample": {"temperature": 1e-300}},
            r"sample\.temperature: 1e-300 is out of range; expected a number from 0\.001",
        ),
        (
            {"sample": {"seed": -1}},
            r"sample\.seed: -1 is out of range; expected an integer from 0 to 18446744073709551615",
        ),
        ({"sample": {"seed": 2**64}}, r"sample\.seed: 18446744073709551616 is out of range"),
    ],
)
def test_bad_values_name_the_file_and_key(raw, expected):
    with pytest.raises(KarnnaError, match=expected) as info:
        config_from_dict(raw, "params.yaml")
    assert str(info.value).startswith("params.yaml")
    assert "\n" not in str(info.value)


def test_integers_are_accepted_for_floats():
    cfg = config_from_dict({"train": {"lr": 1, "grad_clip": 5}})
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)


def test_flat_names_are_the_params_yaml_paths():
    flat = Config().flat()
    assert flat["train.lr"] == Config().train.lr
    assert flat["model.lstm_size"] == Config().model.lstm_size


@pytest.mark.parametrize(
    "raw, expected",
    [
        (
            {"space": {"model.dropout": {"low": 0.5, "high": 0.2}}},
            r"tune\.space\.model\.dropout\.high: 0\.2 is out of range; expected above low \(0\.5\): the range is empty or inverted",
        ),
        (
            {"space": {"model.dropout": {"low": 0.3, "high": 0.3}}},
            r"tune\.space\.model\.dropout\.high: .*empty or inverted",
        ),
        ({"space": {"model.dropout": {"low": 0.3}}}, r"tune\.space\.model\.dropout\.low: .*both low and high"),
        (
            {"space": {"model.lstm_size": {"choices": []}}},
            r"tune\.space\.model\.lstm_size\.choices: \[\] .*non-empty list",
        ),
        (
            {"space": {"train.lr": {"low": "1e-3", "high": 1.0e-2}}},
            r"tune\.space\.train\.lr\.low: expected a number, got string '1e-3'.*write 1\.0e-3",
        ),
        (
            {"space": {"train.lr": {"low": 0.0, "high": 1.0e-2, "log": True}}},
            r"tune\.space\.train\.lr\.low: .*above 0 on a log",
        ),
        (
            {"space": {"model.dropout": {"lo": 0.1}}},
            r"tune\.space\.model\.dropout\.lo: unknown key .*choices, low, high, log",
        ),
        ({"pruner": "random"}, r"tune\.pruner: 'random' is not one of 'halving' \| 'hyperband' \| 'median' \| 'none'"),
        ({"budget_chars": 0}, r"tune\.budget_chars: 0 is out of range; expected a positive integer or null"),
        ({"eval_chars": 1}, r"tune\.eval_chars: 1 is out of range"),
        ({"reduction_factor": 1}, r"tune\.reduction_factor: 1 is out of range; expected an integer of at least 2"),
        ({"n_trial": 3}, r"tune\.n_trial: unknown key \(did you mean 'n_trials'\?\)"),
    ],
)
def test_bad_tune_values_name_the_key(raw, expected):
    with pytest.raises(KarnnaError, match=expected) as info:
        section_from_dict(TuneConfig, raw, "params.yaml: tune")
    assert str(info.value).startswith("params.yaml: tune.") and "\n" not in str(info.value)


def test_overrides_are_validated_like_the_file():
    cfg = with_overrides(Config(), {"model.lstm_size": 256})
    assert cfg.model.lstm_size == 256 and Config().model.lstm_size == 512
    with pytest.raises(KarnnaError, match=r"trial: model\.dropout: 1\.5 is out of range"):
        with_overrides(Config(), {"model.dropout": 1.5}, "trial")
    with pytest.raises(KarnnaError, match="unknown parameter 'model.size'"):
        with_overrides(Config(), {"model.size": 1})
