"""Writing text: sampling one character at a time from a prime with top-k and
temperature (sampling), and the fast single-step recurrences that make batch-1 sampling cheap on a
CPU (stepper). The command is `python -m src.sample` (src/sample.py).
"""
