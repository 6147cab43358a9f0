"""Great Expectations suites for the dataset formats: the checks a recipe's data must pass before training.

Each split becomes a pandas frame holding its fields plus a few derived columns (``token_count``,
``is_duplicate``, ``exact_overlap_with``, ``normalised_overlap_with``, ``chat_problem``); the default suite of
the recipe's format runs on it through a real (ephemeral) GX context. :func:`validate_splits` returns a
:class:`ValidationReport` whose :meth:`~ValidationReport.summary` names each failed expectation with a
sample row; :func:`write_data_docs` renders the results as GX Data Docs.

GX takes seconds to import, so it is imported inside the functions that use it.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from adapter_registry.contract import chat_problem, fill_template
from adapter_registry.data.normalise import normalise_text
from adapter_registry.vocabulary import SPLITS

if TYPE_CHECKING:
    import pandas as pd

    from adapter_registry.recipes.schema import DataSpec, ExpectationsSpec

REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
    "text": ("text",),
    "chat": ("messages",),
}
SAMPLE_CHARS = 160


@dataclass(frozen=True)
class Failure:
    """One failed expectation on one split, with a row that shows the problem (None for table-level checks)."""

    split: str
    expectation: str
    column: str | None
    detail: str
    sample: dict[str, Any] | None

    def __str__(self) -> str:
        on = f"({self.column})" if self.column else ""
        text = f"[{self.split}] {self.expectation}{on}: {self.detail}"
        if self.sample is not None:
            text += f"\n    e.g. {json.dumps(self.sample, ensure_ascii=False)}"
        return text


@dataclass
class ValidationReport:
    """What validation found: pass/fail, the failures, statistics, and the full GX results (JSON-ready)."""

    success: bool
    failures: list[Failure]
    statistics: dict[str, Any]
    result: dict[str, Any]

    def summary(self) -> str:
        """One line per failed expectation with a sample row; a single line when everything passed."""
        rows = ", ".join(f"{s} {n}" for s, n in self.statistics.get("rows", {}).items())
        if self.success:
            return f"data validation passed: {self.statistics.get('expectations', 0)} expectations on {rows}"
        head = f"data validation failed: {len(self.failures)} expectation(s) on {rows}"
        return "\n".join([head, *(f"  {f}" for f in self.failures)])

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (what goes to data/08_reporting/ and MLflow)."""
        return {
            "success": self.success,
            "failures": [f.__dict__ for f in self.failures],
            "statistics": self.statistics,
            "result": self.result,
        }


# ------------------------------------------------------------------------------------------------ frames
def _is_text(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and bool(value.strip())


def _key_and_full(
    record: dict[str, Any], fmt: str, data: DataSpec, template: str, tokenizer: Any
) -> tuple[str | None, str | None]:
    """The text that identifies a row (for leakage) and the whole example (for its length); None if unusable."""
    if fmt == "classification":
        text = record.get(data.text_column)
        return (text, text) if _is_text(text) else (None, None)
    if fmt == "completion":
        p, c = record.get("prompt"), record.get("completion")
        return (p, fill_template(template, p) + c) if _is_text(p) and _is_text(c) else (None, None)
    if fmt == "alpaca":
        i, extra, o = record.get("instruction"), record.get("input") or "", record.get("output")
        if not (_is_text(i) and _is_text(o) and isinstance(extra, str)):
            return None, None
        key = i + (f"\n\n{extra}" if extra.strip() else "")
        return key, fill_template(template, key) + o
    if fmt == "text":
        t = record.get("text")
        return (t, t) if _is_text(t) else (None, None)
    messages = record.get("messages")
    if not isinstance(messages, list) or chat_problem(messages) is not None:
        return None, None
    key = "\n".join(m["content"] for m in messages if m["role"] != "assistant")
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        full = str(tokenizer.apply_chat_template(messages, tokenize=False))
    else:
        full = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
    return key, full


def _token_counts(texts: list[str | None], tokenizer: Any) -> list[float]:
    present = [t for t in texts if t is not None]
    if not present:
        return [math.nan] * len(texts)
    if tokenizer is None:
        lengths = iter([len(t.split()) for t in present])
    else:
        valid = [t.encode("utf-8", "replace").decode("utf-8") for t in present]  # lone surrogates → "?"
        lengths = iter([len(ids) for ids in tokenizer(valid, add_special_tokens=True)["input_ids"]])
    return [float(next(lengths)) if t is not None else math.nan for t in texts]


def _frames(
    splits: dict[str, list[dict[str, Any]]], fmt: str, data: DataSpec, template: str, tokenizer: Any
) -> tuple[dict[str, pd.DataFrame], dict[str, list[str]]]:
    """One frame per split: the record fields (object dtype) plus the derived columns the suite checks."""
    import pandas as pd

    fields = list(REQUIRED_FIELDS.get(fmt, (data.text_column, data.label_column)))
    frames: dict[str, pd.DataFrame] = {}
    seen_exact: dict[str, str] = {}
    seen_norm: dict[str, str] = {}
    present: dict[str, list[str]] = {}
    for split in _ordered(splits):
        records = splits[split]
        columns = list(dict.fromkeys(k for r in records for k in r))
        frame = pd.DataFrame(
            {c: _objects([_utf8(r.get(c)) for r in records]) for c in columns}, index=range(len(records))
        )
        present[split] = [f for f in fields if f in frame.columns]
        if fmt == "classification" and data.label_column in frame.columns:
            frame[data.label_column] = _objects(
                [None if v is None else str(v) for v in frame[data.label_column]]
            )
        pairs = [_key_and_full(r, fmt, data, template, tokenizer) for r in records]
        keys = [k for k, _ in pairs]
        frame["token_count"] = _token_counts([f for _, f in pairs], tokenizer)
        identity = [json.dumps([r.get(f) for f in fields], ensure_ascii=False, default=str) for r in records]
        frame["is_duplicate"] = pd.Series(identity, dtype=object).duplicated().astype(int).to_numpy()
        norms = [normalise_text(k) if k is not None else None for k in keys]
        frame["exact_overlap_with"] = _objects([seen_exact.get(k) if k is not None else None for k in keys])
        frame["normalised_overlap_with"] = _objects(
            [seen_norm.get(n) if n is not None else None for n in norms]
        )
        if fmt == "chat":
            frame["chat_problem"] = _objects([chat_problem(r.get("messages")) for r in records])
        for k, n in zip(keys, norms, strict=True):
            if k is not None:
                seen_exact.setdefault(k, split)
                seen_norm.setdefault(n or "", split)
        frames[split] = frame
    return frames, present


def _utf8(value: Any) -> Any:
    """Strings that cannot be UTF-8 (lone surrogates, e.g. from a JSON "\\ud800") get U+FFFD in their place,
    which the UTF-8 expectation then reports (pandas and GX cannot hash such strings at all)."""
    if not isinstance(value, str):
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return value


def _objects(values: list[Any]) -> Any:
    """A column that keeps None as None (pandas 3 would infer a string dtype with NaN)."""
    import pandas as pd

    return pd.Series(values, dtype=object)


def _ordered(splits: dict[str, Any]) -> list[str]:
    return sorted(splits, key=lambda s: (SPLITS.index(s) if s in SPLITS else len(SPLITS), s))


# ------------------------------------------------------------------------------------------------ suites
def _suite_expectations(
    split: str, fmt: str, present: list[str], data: DataSpec, spec: ExpectationsSpec, labels: list[str] | None
) -> list[Any]:
    """The default suite of ``fmt`` for one split (GX expectation objects, each with a ``meta.why``)."""
    import great_expectations as gx

    E = gx.expectations
    why = lambda text: {"why": text}  # noqa: E731
    fields = list(REQUIRED_FIELDS.get(fmt, (data.text_column, data.label_column)))
    out: list[Any] = [
        E.ExpectTableRowCountToBeBetween(
            min_value=spec.min_rows,
            meta=why(f"each split needs at least {spec.min_rows} rows (expectations.min_rows)"),
        ),
    ]
    for name in fields:
        out.append(E.ExpectColumnToExist(column=name, meta=why(f"required field {name!r} of format {fmt!r}")))
    for name in present:
        out.append(E.ExpectColumnValuesToNotBeNull(column=name, meta=why(f"{name!r} must not be null")))
        if name == "messages" or (fmt == "classification" and name == data.label_column):
            continue
        out += [
            E.ExpectColumnValuesToBeOfType(column=name, type_="str", meta=why(f"{name!r} must be a string")),
            E.ExpectColumnValuesToMatchRegex(
                column=name, regex=r"\S", meta=why(f"{name!r} must not be empty")
            ),
            E.ExpectColumnValuesToNotMatchRegex(
                column=name,
                regex=r"[\ud800-\udfff\ufffd]",
                meta=why(
                    f"{name!r} must be valid UTF-8 text (no lone surrogates or U+FFFD replacement characters)"
                ),
            ),
        ]
    out += [
        E.ExpectColumnValuesToBeBetween(
            column="token_count",
            min_value=spec.min_tokens,
            max_value=spec.max_tokens,
            meta=why(
                f"length in tokens of the base's tokenizer must be within "
                f"[{spec.min_tokens}, {spec.max_tokens}] (expectations.min_tokens/"
                "max_tokens)"
            ),
        ),
        E.ExpectColumnMeanToBeBetween(
            column="is_duplicate",
            min_value=0,
            max_value=spec.max_duplicate_share,
            meta=why(
                f"share of exact duplicate rows must be <= {spec.max_duplicate_share}"
                " (expectations.max_duplicate_share); deduplicate the data"
            ),
        ),
    ]
    if fmt == "classification" and labels is not None and data.label_column in present:
        out.append(
            E.ExpectColumnValuesToBeInSet(
                column=data.label_column,
                value_set=sorted(labels),
                meta=why("labels must be in expectations.labels (default: the labels seen in train)"),
            )
        )
    if fmt == "chat" and "messages" in present:
        out.append(
            E.ExpectColumnValuesToBeNull(
                column="chat_problem",
                meta=why(
                    "chats need an optional system turn, then user/assistant alternating, ending with a non-empty "
                    "assistant turn"
                ),
            )
        )
    if split != "train" and not spec.allow_split_overlap:
        for column, kind in (
            ("exact_overlap_with", "exactly"),
            ("normalised_overlap_with", "after normalising case, punctuation and spaces"),
        ):
            out.append(
                E.ExpectColumnValuesToBeNull(
                    column=column,
                    meta=why(
                        f"leakage: rows whose text is in an earlier split ({kind}); drop them or set "
                        "expectations.allow_split_overlap"
                    ),
                )
            )
    for extra in getattr(spec, "extra", None) or ():
        if split in (_get(extra, "splits") or SPLITS):
            out.append(_extra_expectation(extra))
    return out


def _get(item: Any, name: str) -> Any:
    return item.get(name) if isinstance(item, dict) else getattr(item, name, None)


def _extra_expectation(extra: Any) -> Any:
    """A recipe-declared expectation, ``{expectation: expect_..., kwargs: {...}, splits: [...]}`` → GX object."""
    from great_expectations.expectations.registry import get_expectation_impl

    name = _get(extra, "expectation")
    kwargs = dict(_get(extra, "kwargs") or {})
    return get_expectation_impl(name)(**kwargs, meta={"why": f"added by the recipe: {name}"})


# ------------------------------------------------------------------------------------------------ results
def _clip(value: Any) -> Any:
    if isinstance(value, str):
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value if len(value) <= SAMPLE_CHARS else value[:SAMPLE_CHARS] + "…"
    if isinstance(value, list | tuple):
        return [_clip(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _clip(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _sample(
    records: list[dict[str, Any]], frame: pd.DataFrame, kind: str, column: str | None, result: dict[str, Any]
) -> dict[str, Any] | None:
    """A row that shows the failure: GX's first unexpected index, else the first flagged row."""
    index = (result.get("partial_unexpected_index_list") or [None])[0]
    if index is None and column == "is_duplicate":
        flagged = frame.index[frame["is_duplicate"] == 1]
        index = int(flagged[0]) if len(flagged) else None
    if index is None and kind == "expect_column_to_exist" and records:
        index = 0
    if index is None or not records:
        return None
    row = {"row": int(index) + 1, **records[int(index)]}
    if column in ("token_count", "exact_overlap_with", "normalised_overlap_with", "chat_problem"):
        row[column] = _clip(frame.at[index, column])
    return _clip(row)


def _detail(kind: str, kwargs: dict[str, Any], result: dict[str, Any], why: str) -> str:
    if "unexpected_count" in result:
        n, total = result["unexpected_count"], result.get("element_count", 0)
        shown = result.get("partial_unexpected_list") or []
        return f"{why}: {n} of {total} rows fail" + (f" (e.g. {_clip(shown[:3])})" if shown else "")
    if "observed_value" in result:
        bounds = {k: kwargs[k] for k in ("min_value", "max_value") if kwargs.get(k) is not None}
        observed = result["observed_value"]
        observed = round(float(observed), 4) if isinstance(observed, float) else observed
        return f"{why}: observed {observed}, expected {bounds}"
    return why


def validate_splits(
    splits: dict[str, list[dict[str, Any]]],
    *,
    data: DataSpec,
    expectations: ExpectationsSpec,
    task_type: str,
    tokenizer: Any,
    prompt_template: str | None = None,
) -> ValidationReport:
    """Run the default GX suite of ``data.format`` on every split; never raises for bad data, reports it.

    ``splits`` maps split names (train, validation, test) to their records (``formats.read_records``);
    ``tokenizer`` is the base model's (None: whitespace words). ``task_type`` is the recipe's task type.
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    started = time.perf_counter()
    fmt = data.format
    if task_type == "sequence_classification" and fmt != "classification":
        raise ValueError(f"task {task_type} needs data.format classification, got {fmt!r}")
    template = prompt_template or "{prompt}"
    frames, present = _frames(splits, fmt, data, template, tokenizer)
    labels: list[str] | None = None
    if fmt == "classification":
        train = splits.get("train", [])
        labels = (
            list(expectations.labels)
            if expectations.labels
            else sorted({str(r[data.label_column]) for r in train if r.get(data.label_column) is not None})
        )

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    source = context.data_sources.add_pandas("dataset")
    failures: list[Failure] = []
    results: dict[str, Any] = {}
    n_expectations = 0
    for split, frame in frames.items():
        batch = source.add_dataframe_asset(name=split).add_batch_definition_whole_dataframe(split)
        suite = context.suites.add(
            gx.ExpectationSuite(
                name=f"{fmt}.{split}",
                expectations=_suite_expectations(split, fmt, present[split], data, expectations, labels),
            )
        )
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=split, data=batch, suite=suite)
        )
        outcome = definition.run(
            batch_parameters={"dataframe": frame},
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": 3},
        )
        n_expectations += len(outcome.results)
        for r in outcome.results:
            if r.success:
                continue
            config = r.expectation_config
            assert config is not None  # GX always sets it on results of a suite run
            column = config.kwargs.get("column")
            why = (config.meta or {}).get("why", config.type)
            if r.exception_info and r.exception_info.get("raised_exception"):
                why += f" (GX error: {r.exception_info.get('exception_message')})"
            failures.append(
                Failure(
                    split,
                    config.type,
                    column,
                    _detail(config.type, config.kwargs, r.result, why),
                    _sample(splits[split], frame, config.type, column, r.result),
                )
            )
        results[split] = _clip(outcome.to_json_dict())

    statistics = _statistics(frames, splits, fmt, data)
    statistics["expectations"] = n_expectations
    statistics["seconds"] = round(time.perf_counter() - started, 3)
    return ValidationReport(
        not failures, failures, statistics, {"success": not failures, "format": fmt, "splits": results}
    )


def _statistics(
    frames: dict[str, pd.DataFrame], splits: dict[str, list[dict[str, Any]]], fmt: str, data: DataSpec
) -> dict[str, Any]:
    stats: dict[str, Any] = {
        "format": fmt,
        "rows": {s: len(splits[s]) for s in frames},
        "tokens": {},
        "duplicate_share": {},
        "overlap": {},
    }
    for split, frame in frames.items():
        tokens = frame["token_count"].dropna() if len(frame) else frame.get("token_count", [])
        if len(tokens):
            stats["tokens"][split] = {
                "min": int(tokens.min()),
                "mean": round(float(tokens.mean()), 2),
                "p95": float(tokens.quantile(0.95)),
                "max": int(tokens.max()),
                "total": int(tokens.sum()),
            }
        stats["duplicate_share"][split] = round(float(frame["is_duplicate"].mean()), 4) if len(frame) else 0.0
        if split != "train" and len(frame):
            stats["overlap"][split] = {
                "exact": int(frame["exact_overlap_with"].notna().sum()),
                "normalised": int(frame["normalised_overlap_with"].notna().sum()),
            }
        if fmt == "classification" and data.label_column in frame.columns:
            stats.setdefault("labels", {})[split] = dict(
                sorted(Counter(v for v in frame[data.label_column] if v is not None).items())
            )
    return stats


# ------------------------------------------------------------------------------------------------ data docs
def write_data_docs(report: ValidationReport, folder: Path) -> Path:
    """Render ``report.result`` as GX Data Docs under ``folder``; returns ``folder/index.html``."""
    import great_expectations as gx
    from great_expectations.core.expectation_validation_result import expectationSuiteValidationResultSchema
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    site = "adapter_registry"
    context.add_data_docs_site(
        site,
        {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(folder)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    for split, raw in report.result.get("splits", {}).items():
        result = expectationSuiteValidationResultSchema.load(raw)
        run_id = raw.get("meta", {}).get("run_id") or {}
        key = ValidationResultIdentifier(
            expectation_suite_identifier=ExpectationSuiteIdentifier(name=result.suite_name),
            run_id=RunIdentifier(run_name=run_id.get("run_name") or split, run_time=run_id.get("run_time")),
            batch_identifier=split,
        )
        context.validation_results_store.set(key, result)
    context.build_data_docs(site_names=[site])
    index = folder / "index.html"
    if not index.is_file():
        raise FileNotFoundError(f"GX did not write {index}")
    return index
