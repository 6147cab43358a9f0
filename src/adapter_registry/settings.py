"""Kedro settings: the offline defaults and our MLflow hooks (one run per recipe).

Kedro imports this module when ``kedro`` starts the project, before its CLI hooks (telemetry included) run and
before any node imports transformers: this is where a ``kedro run`` gets the offline defaults.
"""

from adapter_registry.environment import offline_defaults
from adapter_registry.pipelines.hooks import MlflowRecipeHooks

offline_defaults()

HOOKS = (MlflowRecipeHooks(),)

# kedro-mlflow's own hook opens one run per `kedro run`; we keep one run per recipe namespace instead
# (see pipelines/hooks.py), so its auto-registered hook is switched off.
DISABLE_HOOKS_FOR_PLUGINS = ("kedro-mlflow", "kedro_mlflow")
