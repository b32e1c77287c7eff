"""karnna: a reproducible character-level LSTM language model (the "Anna KaRNNa" recipe, fixed)."""
