"""The registry gate: register a challenger, compare it with the champion, move the alias.

Promotion uses MLflow aliases only (stages are deprecated since MLflow 2.9). The first
version becomes ``@champion``. A later one replaces the champion only when its log loss on
the challenger's holdout is lower than the champion's on the same rows by more than
``registry.min_log_loss_improvement``. The decision and its evidence are written as
version tags and appended to an audit log, a JSON-lines file in the state folder.
``rollback`` moves the alias back to the previous champion.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from loopline import metrics, settings, tracking, training
from loopline.config import LooplineConfig

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"


class RollbackError(RuntimeError):
    """The champion alias cannot be moved back."""


def audit_log_path():
    return settings.home() / "registry_audit.jsonl"


def _append_audit(entry: dict[str, Any]) -> None:
    path = audit_log_path()
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry, sort_keys=True, default=str) + "\n")


def champion_version(client, name: str):
    """Return the model version holding ``@champion``, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def register_and_gate(config: LooplineConfig, summary: dict[str, Any], reason: str) -> dict[str, Any]:
    """Register the trained model as a new version and promote it if it beats the champion."""
    import mlflow

    client = tracking.configure()
    name = config.model_name
    window = training.TrainingWindow.from_dict(summary["window"])

    current = champion_version(client, name)
    registered = mlflow.register_model(summary["model_uri"], name, tags={"loopline.run_id": summary["run_id"]})
    version = str(registered.version)
    logger.info("registered %s version %s from run %s", name, version, summary["run_id"])

    evidence: dict[str, Any] = {
        "holdout": f"{window.holdout_days[0]}..{window.holdout_days[-1]}",
        "challenger_version": version,
        "challenger_log_loss": summary["holdout_log_loss"],
        "challenger_roc_auc": summary["holdout_roc_auc"],
        "margin": config.registry.min_log_loss_improvement,
        "reason": reason,
    }
    if current is None:
        promote = True
        evidence["decision"] = "promoted: no champion yet"
    else:
        champion_quality = _score_on_holdout(config, f"models:/{name}/{current.version}", window)
        evidence.update(
            {
                "champion_version": str(current.version),
                "champion_log_loss": champion_quality["log_loss"],
                "champion_roc_auc": champion_quality["roc_auc"],
            }
        )
        improvement = champion_quality["log_loss"] - summary["holdout_log_loss"]
        promote = improvement > config.registry.min_log_loss_improvement
        verdict = "promoted" if promote else "kept as challenger"
        evidence["decision"] = (
            f"{verdict}: log loss {summary['holdout_log_loss']:.5f} vs champion "
            f"{champion_quality['log_loss']:.5f} (improvement {improvement:.5f}, margin "
            f"{config.registry.min_log_loss_improvement})"
        )

    for key, value in evidence.items():
        client.set_model_version_tag(name, version, f"gate.{key}", str(value))
    if promote:
        if current is not None:
            client.set_model_version_tag(name, version, "gate.previous_champion", str(current.version))
        client.set_registered_model_alias(name, CHAMPION, version)
        client.set_model_version_tag(name, version, "loopline.policy_version", config.monitoring.policy_version)
    else:
        client.set_registered_model_alias(name, CHALLENGER, version)

    entry = {
        "at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "action": "promote" if promote else "reject",
        "model": name,
        **evidence,
    }
    _append_audit(entry)
    logger.info("registry gate for %s version %s: %s", name, version, evidence["decision"])
    return {"version": version, "promoted": promote, "decision": evidence["decision"]}


def _score_on_holdout(config: LooplineConfig, model_uri: str, window: training.TrainingWindow) -> dict:
    import mlflow

    feature_set = config.feature_set
    holdout = training.training_set(config, window.holdout_days)
    model = mlflow.sklearn.load_model(model_uri)
    probability = model.predict_proba(holdout[feature_set.features])[:, 1]
    return metrics.quality_summary(holdout[feature_set.label], probability)


def rollback(config: LooplineConfig, reason: str) -> dict[str, Any]:
    """Move ``@champion`` back to the version it replaced, recorded on the current one."""
    client = tracking.configure()
    name = config.model_name
    current = champion_version(client, name)
    if current is None:
        raise RollbackError(f"model {name!r} has no @champion to roll back; train and promote a model first")
    previous = current.tags.get("gate.previous_champion")
    if not previous:
        raise RollbackError(
            f"{name} version {current.version} was the first champion, so there is no earlier version to "
            "roll back to; promote another version with `mlflow` or retrain"
        )
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_model_version_tag(name, current.version, "gate.rolled_back", reason)
    _append_audit(
        {
            "at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "action": "rollback",
            "model": name,
            "from_version": str(current.version),
            "to_version": previous,
            "reason": reason,
        }
    )
    logger.warning("rolled %s @champion back from version %s to %s: %s", name, current.version, previous, reason)
    return {"from_version": str(current.version), "to_version": previous}


def window_end_of(version) -> dt.date | None:
    """Return the end of the training window of a model version, from its run's params."""
    client = tracking.configure()
    run_id = version.tags.get("loopline.run_id") or version.run_id
    if not run_id:
        return None
    params = client.get_run(run_id).data.params
    end = params.get("window_end")
    return dt.date.fromisoformat(end) if end else None

