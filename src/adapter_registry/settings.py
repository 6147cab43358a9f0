"""Kedro settings: our MLflow hooks (one run per recipe) and the OmegaConf config loader."""

from adapter_registry.pipelines.hooks import MlflowRecipeHooks

HOOKS = (MlflowRecipeHooks(),)

# kedro-mlflow's own hook opens one run per `kedro run`; we keep one run per recipe namespace instead
# (see pipelines/hooks.py), so its auto-registered hook is switched off.
DISABLE_HOOKS_FOR_PLUGINS = ("kedro-mlflow", "kedro_mlflow")
