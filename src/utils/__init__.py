"""What every job shares and no job owns: karnna's error type and its one-line rendering
(errors), turning bad input, a full disk or a signal into one line and an exit code (faults),
files written whole or not at all (fileio), and where a checkout keeps its files and its default
tracking store (repo). Imports no other package of src/.
"""
