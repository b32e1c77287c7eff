"""karnna: a reproducible character-level LSTM language model (the "Anna KaRNNa" recipe, fixed).

Packages, by job, each importing only those before it in this list (tests/test_house_rules.py):
utils, data, model, config, training, generation, tracking, serving, tuning. The modules at this
level are the commands, each a thin main() over the packages: `python -m src.tune`, `src.sample`,
`src.tracking_server`, `src.tracking_sync`. The DVC stages live in pipeline/.
"""
