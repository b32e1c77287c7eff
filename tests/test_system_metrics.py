"""tracking.system_metrics: MLflow's own system metrics monitor on the training run, in a real SQLite store."""

import time

from src.config.schema import config_from_dict
from src.tracking import runs
from tests.conftest import tiny_params


def test_system_metrics_reach_the_training_run_when_asked(tmp_path, monkeypatch):
    """tracking.system_metrics: MLflow's own monitor logs system/... metrics into the run (sampled
    every 0.2 s here instead of MLflow's 10 s); off, the run has none."""
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    found = {}
    for on in (True, False):
        params = tiny_params(tracking={"enabled": True, "system_metrics": on})
        with runs.start_training_run(config_from_dict(params), uri) as reporter:
            time.sleep(1.5)  # a training's worth of samples
        run = runs.connect(uri).get_run(reporter.run_id)
        assert run.info.status == "FINISHED"
        found[on] = {k for k in run.data.metrics if k.startswith("system/")}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= found[True]
    assert found[False] == set()


def test_the_gpu_monitor_has_its_library():
    """MLflow's GPU monitor reads NVML through pynvml (nvidia-ml-py) and quietly skips the GPU
    without it: the set-up installs it, so a GPU box gets GPU metrics (where NVML finds no GPU,
    as here, the monitor is skipped with a debug line)."""
    import pynvml
    from mlflow.system_metrics.metrics import gpu_monitor

    assert gpu_monitor.pynvml is pynvml
