"""Fitting a model: the loop with exact resume (loop), what a run carries from step to
step and into last.pt (state), building the model, its generators and schedule (setup), the
validation loss (evaluate), the interface results are reported through (report), and the device,
precision and threads a process trains with (device). Knows nothing of MLflow or Optuna.
"""
