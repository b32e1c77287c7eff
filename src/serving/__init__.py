"""The trained model as users call it: registering a checkpoint in MLflow's registry and
deciding `@champion` (registry), the pyfunc model that writes text from a request (pyfunc), and
the code file MLflow runs to load it (served_model).
"""
