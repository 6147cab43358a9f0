"""Kedro wiring and Kedro's edges: one folder per stage (nodes.py + pipeline.py), composed per recipe by
pipeline_registry; datasets.py (the custom datasets conf/base/catalog.yml names) and hooks.py (one MLflow run
per recipe namespace), where the side effects of a ``kedro run`` live."""
