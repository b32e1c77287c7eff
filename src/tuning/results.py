"""What a study found: the table of best trials, tune/best_params.yaml with the pipeline command
that trains the winner, and Optuna's plots for the study's MLflow parent run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import optuna
import yaml

from src.config.messages import yaml_float
from src.utils import fileio


def best_trials_table(study: optuna.Study, top: int = 10) -> str:
    """The best complete trials, and the enqueued ones (seed recipe, defaults) whatever became of
    them, so the table shows whether the search beat each."""
    trials = [t for t in study.trials if t.state.is_finished()]
    done = sorted((t for t in trials if t.state == optuna.trial.TrialState.COMPLETE), key=lambda t: t.value)
    shown = done[:top] + [t for t in trials if t.user_attrs.get("enqueued") and t not in done[:top]]
    rows = [f"{'trial':>5}  {'state':<8} {'val loss':>8}  {'chars':>11}  {'n_params':>10}  params"]
    for t in shown:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items())
        label = f"  ({t.user_attrs['enqueued'].replace('_', ' ')})" if t.user_attrs.get("enqueued") else ""
        # a pruned trial's value is its last report (Optuna's), from the validation on the prefix
        value = t.value if t.value is not None else (list(t.intermediate_values.values()) or [float("nan")])[-1]
        mark = "" if t.state == optuna.trial.TrialState.COMPLETE else "*"
        rows.append(
            f"{t.number:>5}  {t.state.name.lower():<8} {value:>8.4f}{mark or ' '} "
            f"{t.user_attrs.get('chars_trained', 0):>11,}  {t.user_attrs.get('n_params', 0):>10,}  {params}{label}"
        )
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in optuna.trial.TrialState if s.is_finished()}
    rows.append(
        "trials: "
        + ", ".join(f"{n} {k}" for k, n in counts.items())
        + "  (* a pruned trial's last validation, on tune.eval_chars characters)"
    )
    return "\n".join(rows)


def best_params_command(params: dict[str, Any]) -> str:
    """The pipeline command that trains as the trial did (values exact, not rounded)."""
    return "dvc exp run " + " ".join(
        f"-S {k}={yaml_float(v) if isinstance(v, float) else v}" for k, v in params.items()
    )


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_best(study: optuna.Study, path: Path) -> Optional[dict[str, Any]]:
    try:
        best = study.best_trial
    except ValueError:
        return None
    overrides = best.user_attrs.get("pipeline_overrides", dict(best.params))
    summary = {
        "study": study.study_name,
        "trial": best.number,
        "val_loss": best.value,
        "chars_trained": best.user_attrs.get("chars_trained"),
        "n_params": best.user_attrs.get("n_params"),
        "params": dict(best.params),
        "command": best_params_command(overrides),
    }
    fileio.write_text(path, yaml.safe_dump(summary, sort_keys=False))
    return summary
