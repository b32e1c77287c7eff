"""Measurements of the pipeline's speed; each module runs as `python -m benchmarks.<name>`."""
