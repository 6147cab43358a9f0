"""Kedro wiring only: one folder per stage, composed per recipe by pipeline_registry."""
