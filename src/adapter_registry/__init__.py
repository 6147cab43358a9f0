"""adapter-registry: declarative PEFT adapters, trained, evaluated, merged and registered in MLflow.

Importing the package leaves ``os.environ`` alone; the entry points set the offline defaults
(:func:`adapter_registry.environment.offline_defaults`).
"""

__version__ = "0.1.0"
