"""The code file of the served MLflow model ("models from code"): it names the model's class.

MLflow runs this file when it saves or loads the model; src/ travels with the model as its code,
and the weights come from the model's artifacts (src.serving.pyfunc.TextGenerator.load_context).
"""

import mlflow.models

from src.serving.pyfunc import TextGenerator

mlflow.models.set_model(TextGenerator())
