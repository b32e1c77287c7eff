"""MLflow, behind one door: the client and store errors (store), a training's run with its
params, curves, figures and files (runs, figures), the runs of an Optuna study (trials), results
kept on disk while the store is away and sent later (wal), and the team's tracking server
(server). Commands: `python -m src.tracking_server`, `python -m src.tracking_sync`.
"""
