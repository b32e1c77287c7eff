"""DVC stages: each module is one stage with a thin main() over the src library."""
