"""The demo datasets of the default recipes, versioned by DVC: the code of the stages in ``dvc.yaml``.

- ``demo.py``: the ``generate`` stage (seeded, no network); its phrase tables are data files beside it,
  ``phrases.yaml`` (shared) and ``datasets/<name>.yaml`` (one per dataset).
- ``stages.py``: the ``clean`` and ``split`` stages.
- ``jsonl.py``: reading and writing the JSONL files the stages pass on.

Not part of the ``adapter_registry`` package: a user's own data never goes through this. Run from the repository
root (``dvc repro``, or ``python -m datagen.demo ...``).
"""
