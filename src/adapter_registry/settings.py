"""Kedro settings: the offline defaults and our MLflow hooks (one run per recipe).

Kedro imports this module when ``kedro`` starts the project, before its CLI hooks (telemetry included) run and
before any node imports transformers: this is where a ``kedro run`` gets the offline defaults.
"""

from adapter_registry.environment import offline_defaults
from adapter_registry.pipelines.hooks import MlflowRecipeHooks

offline_defaults()

HOOKS = (MlflowRecipeHooks(),)

# Kedro registers the hooks of every installed plugin. kedro-mlflow is no dependency (pipelines/hooks.py keeps
# one MLflow run per recipe namespace), but an environment set up before it was dropped still has it, and its
# hook would open a run per `kedro run` in ./mlruns, a file store MLflow 3 refuses: `kedro run` would fail.
DISABLE_HOOKS_FOR_PLUGINS = ("kedro-mlflow", "kedro_mlflow")
