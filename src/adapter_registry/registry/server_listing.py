"""The server's bulk reads in plain SQL: every adapter's version summary, aliases and newest version in one
request (the listing route), and the audit runs behind the auth app's trails route (``audit_runs``).

A listing over HTTP through MLflow's own API is one paged ``search_registered_models``: MLflow builds every
registered model with all its tags and, per stage, its newest version with all of *that* version's tags (about
11 kB a model; at 500 adapters 5.5 MB and 2 s of the server's time on 2 cores, nearly all of it ORM objects the
listing never reads). The adapter-registry auth app (``registry.auth_app``) serves this route instead::

    GET /api/2.0/adapter-registry/summaries?max_results=N&page_token=T[&name=NAME]

answered by four plain SQL queries on the server's registry tables (the page of registered-model names; their
summary tags, ``registry.summary``; their aliases; the number of their newest live version), with the same rows
MLflow's search reads: the active workspace, prompts left out, deleted versions left out. Its answer::

    {"models": [{"name": ..., "tags": {"ar.summary": ..., "ar.summary.0": ...}, "aliases": {"production": "3"},
                 "top": 7}], "next_page_token": "..."}

``top`` is what the client checks a summary against (``registry.search.search_summaries``), as it does with
``latest_versions`` from MLflow's search. Who may read what is basic-auth's rule for ``search_registered_models``
(an admin everything, others the models they may READ); a ``name`` the user may not read is 403. The client
(``registry.rest.RestClient.summaries``) uses the route where the server answers it, MLflow's search elsewhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adapter_registry.registry import summary

if TYPE_CHECKING:
    from flask import Response

ROUTE = "summaries"
MAX_RESULTS = 1000  # models a page (each query names them: an IN list)


def summaries_view() -> Response:
    """The route's view (installed by ``registry.auth_app``)."""
    from flask import jsonify, request
    from mlflow.server.handlers import _get_model_registry_store
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

    store = _get_model_registry_store()
    if not isinstance(store, SqlAlchemyStore):
        return _error(501, "NOT_IMPLEMENTED", "the registry store of this server is not a SQL database")
    try:
        limit = int(request.args.get("max_results") or MAX_RESULTS)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_RESULTS:
        return _error(400, "INVALID_PARAMETER_VALUE", f"max_results must be 1 to {MAX_RESULTS}")
    name = request.args.get("name") or None
    readable = _readable()
    if name is not None and readable is not None and not readable(name):
        return _error(403, "PERMISSION_DENIED", f"reading registered model {name!r} needs READ on it")
    models, token = page(store, limit, request.args.get("page_token") or None, name, readable)
    return jsonify({"models": models, "next_page_token": token})


def _readable() -> Any:
    """None for an admin (everything), else ``name -> bool``: basic-auth's read rule for registered models."""
    from mlflow.server import auth

    if auth.sender_is_admin():
        return None
    username = str(getattr(auth.authenticate_request(), "username", ""))
    rule = getattr(auth, "_role_based_read_predicate", None)
    if rule is not None:
        return rule(username, "registered_model")
    return lambda model: bool(auth._get_registered_model_permission(model).can_read)  # an older MLflow


def _error(status: int, code: str, message: str) -> Response:
    """An error answered as MLflow answers them (``registry.auth_app`` installs this module's route)."""
    from flask import jsonify

    response = jsonify({"error_code": code, "message": message})
    response.status_code = status
    return response


def page(
    store: Any, limit: int, after: str | None, name: str | None, readable: Any
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of models (by name, after ``after``), readable ones only; and the next page's token (None: last)."""
    import sqlalchemy as sa
    from mlflow.entities.model_registry.model_version_stages import STAGE_DELETED_INTERNAL
    from mlflow.entities.model_registry.prompt_version import IS_PROMPT_TAG_KEY
    from mlflow.store.model_registry.dbmodels.models import (
        SqlModelVersion as Version,
    )
    from mlflow.store.model_registry.dbmodels.models import (
        SqlRegisteredModel as Model,
    )
    from mlflow.store.model_registry.dbmodels.models import (
        SqlRegisteredModelAlias as Alias,
    )
    from mlflow.store.model_registry.dbmodels.models import (
        SqlRegisteredModelTag as ModelTag,
    )

    def workspace(table: Any) -> list[Any]:
        clauses = getattr(store, "_get_workspace_clauses", None)
        return list(clauses(table)) if clauses is not None else []

    prompts: Any = sa.select(ModelTag.name).where(
        *workspace(ModelTag), ModelTag.key == IS_PROMPT_TAG_KEY, sa.func.lower(ModelTag.value) == "true"
    )
    query: Any = sa.select(Model.name).where(*workspace(Model), Model.name.not_in(prompts))
    if name is not None:
        query = query.where(Model.name == name)
    if after is not None:
        query = query.where(Model.name > after)
    with store.ManagedSessionMaker() as session:
        names = list(session.execute(query.order_by(Model.name).limit(limit + 1)).scalars())
        more = len(names) > limit
        names = names[:limit]
        token = names[-1] if more else None
        if readable is not None:
            names = [n for n in names if readable(n)]
        out = {n: {"name": n, "tags": {}, "aliases": {}, "top": None} for n in names}
        if not names:
            return [], token
        is_summary = sa.or_(ModelTag.key == summary.HEADER, ModelTag.key.like(summary.HEADER + ".%"))
        for model, key, value in session.execute(
            sa.select(ModelTag.name, ModelTag.key, ModelTag.value).where(
                *workspace(ModelTag), ModelTag.name.in_(names), is_summary
            )
        ):
            out[model]["tags"][key] = value
        for model, alias, version in session.execute(
            sa.select(Alias.name, Alias.alias, Alias.version).where(*workspace(Alias), Alias.name.in_(names))
        ):
            out[model]["aliases"][alias] = str(version)
        for model, top in session.execute(
            sa.select(Version.name, sa.func.max(Version.version))
            .where(
                *workspace(Version),
                Version.name.in_(names),
                Version.current_stage != STAGE_DELETED_INTERNAL,
            )
            .group_by(Version.name)
        ):
            out[model]["top"] = int(top)
    return list(out.values()), token


def audit_runs(store: Any, experiment_id: str, model: str | None) -> list[tuple[dict[str, str], bool]] | None:
    """Every run of the audit experiment (deleted ones too; of ``model`` only when given) as (tags, deleted), in
    MLflow's search order (newest first): two plain SQL queries where ``search_runs`` builds each run with its
    params and metrics (0.5 s for 1,000 events on the benchmark's PostgreSQL, against ~0.05 s). None where the
    tracking store is not a SQL database (the caller searches)."""
    import sqlalchemy as sa
    from mlflow.store.tracking.dbmodels.models import SqlRun, SqlTag
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from adapter_registry.registry.entities import AuditTag

    if not isinstance(store, SqlAlchemyStore):
        return None
    query: Any = sa.select(SqlRun.run_uuid, SqlRun.lifecycle_stage).where(
        SqlRun.experiment_id == int(experiment_id)
    )
    if model is not None:
        of_model: Any = sa.select(SqlTag.run_uuid).where(SqlTag.key == AuditTag.MODEL, SqlTag.value == model)
        query = query.where(SqlRun.run_uuid.in_(of_model))
    with store.ManagedSessionMaker() as session:
        runs = list(session.execute(query.order_by(SqlRun.start_time.desc(), SqlRun.run_uuid)))
        tags: dict[str, dict[str, str]] = {run_uuid: {} for run_uuid, _ in runs}
        chosen = query.with_only_columns(SqlRun.run_uuid)
        for run_uuid, key, value in session.execute(
            sa.select(SqlTag.run_uuid, SqlTag.key, SqlTag.value).where(SqlTag.run_uuid.in_(chosen))
        ):
            if run_uuid in tags:
                tags[run_uuid][key] = value
    return [(tags[run_uuid], stage == "deleted") for run_uuid, stage in runs]
