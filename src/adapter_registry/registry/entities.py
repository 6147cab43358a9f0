"""The registry's own vocabulary: tag keys written on every model version, and the entities the store returns.

Ground floor: imports nothing else of ours. Every lineage fact lives in a model-version tag whose key is
defined here, so the pipeline that writes them and the CLI that reads them cannot drift apart.
"""

from __future__ import annotations

PREFIX = "ar."


class Tag:
    """Model-version tag keys (values are strings; JSON where noted)."""

    RECIPE_NAME = "ar.recipe.name"
    RECIPE_HASH = "ar.recipe.hash"            # sha256 of the resolved recipe (recipes.load.recipe_hash)
    TASK = "ar.task"                          # causal_lm_sft | sequence_classification
    METHOD = "ar.method"                      # lora, qlora, ...
    METHOD_FAMILY = "ar.method.family"        # additive | selective | reparameterisation | hybrid
    PEFT_CONFIG = "ar.peft_config"            # JSON of the saved adapter_config.json
    TRAINABLE_PARAMS = "ar.params.trainable"
    TOTAL_PARAMS = "ar.params.total"
    TRAINABLE_SHARE = "ar.params.trainable_share"  # trainable / total, a float
    TRAINING = "ar.training"                  # JSON of the recipe's training block
    BASE_ID = "ar.base.id"                    # offline name, hub id or local path
    BASE_REVISION = "ar.base.revision"        # hub revision, or "" for local/offline
    BASE_FINGERPRINT = "ar.base.fingerprint"  # sha256 identity of the base weights (bases.fingerprint)
    BASE_ARCHITECTURE = "ar.base.architecture"  # e.g. LlamaForCausalLM, BertModel
    BASE_SHAPES = "ar.base.shapes"            # JSON: vocab_size, hidden_size, num_layers, model_type
    GIT_COMMIT = "ar.git.commit"
    GIT_DIRTY = "ar.git.dirty"                # "true" | "false"
    DATA_VALIDATION = "ar.data.validation"    # JSON: success, statistics, failed expectations
    STAGE = "ar.stage"                        # candidate | staging | production | archived
    GATES = "ar.gates"                        # JSON list of gate strings, e.g. ["accuracy >= 0.8"]
    MERGED_URI = "ar.merge.uri"               # where the merged weights were written
    MERGE_PARITY = "ar.merge.max_abs_diff"    # max |logits(merged) - logits(adapter)|
    MERGE_VS_BASE = "ar.merge.diff_vs_base"   # max |logits(merged) - logits(base)| (> 0: it changed something)
    WARNINGS = "ar.warnings"                  # JSON list of warnings recorded at training time
    PARENTS = "ar.parents"                    # JSON list of {"version": "NAME/VERSION", "weight": w}
    RUN_ID = "ar.run_id"

    @staticmethod
    def data_path(split: str) -> str:
        return f"ar.data.{split}.path"

    @staticmethod
    def data_md5(split: str) -> str:
        return f"ar.data.{split}.md5"

    @staticmethod
    def data_commit(split: str) -> str:
        """The git commit whose dvc.lock recorded this md5 ("" when the data is not DVC-tracked)."""
        return f"ar.data.{split}.commit"

    @staticmethod
    def library(package: str) -> str:
        return f"ar.lib.{package}"

    @staticmethod
    def sha256(relative_file: str) -> str:
        """sha256 of one adapter file, keyed by its path relative to the adapter folder."""
        return f"ar.sha256.{relative_file}"

    @staticmethod
    def metric(name: str) -> str:
        """The adapter's score on the test split, e.g. ar.metric.accuracy."""
        return f"ar.metric.{name}"

    @staticmethod
    def base_metric(name: str) -> str:
        """The base model's (or the baseline's) score on the same rows."""
        return f"ar.metric.base.{name}"


STAGES = ("candidate", "staging", "production", "archived")
ADAPTER_ARTIFACT = "adapter"  # artifact folder in the run holding the adapter files
