"""The registry gate: register a challenger, compare it with the champion, move the alias.

Promotion uses MLflow aliases only (stages are deprecated since MLflow 2.9). The first
version becomes ``@champion``. A later one replaces the champion only when, on the
challenger's holdout, its log loss is lower than the champion's by more than
``registry.min_log_loss_improvement`` and its ROC AUC is at most
``registry.max_roc_auc_drop`` below the champion's. Otherwise it gets ``@challenger``.

The decision and its evidence are written as version tags. Every alias move is appended
to an audit log, a JSON-lines file in the state folder, with the versions from and to,
the reason and the cause. ``promote`` and ``rollback`` move the alias by hand. Each
promotion stamps the monitoring policy in force on the new champion.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from loopline import metrics, settings, tracking, training
from loopline.config import LooplineConfig, policy_of

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
# Version tags that stamp the monitoring policy on a champion: its version, and the whole
# policy as JSON.
POLICY_VERSION_TAG = "loopline.policy_version"
POLICY_TAG = "loopline.policy"
# Causes of an alias move, as recorded in the audit log.
CAUSES = ("scheduled", "manual", "monitoring", "cli", "rollback")


class RegistryError(RuntimeError):
    """The registry cannot do what was requested (unknown version, no champion, unreachable)."""


def audit_log_path():
    return settings.home() / "registry_audit.jsonl"


def _append_audit(entry: dict[str, Any]) -> None:
    entry = {"at": dt.datetime.now(dt.timezone.utc).isoformat(), **entry}
    with audit_log_path().open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry, sort_keys=True, default=str) + "\n")


def history() -> list[dict[str, Any]]:
    """Return the audit log entries, oldest first."""
    path = audit_log_path()
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _client():
    """Return a configured MLflow client, or raise ``RegistryError`` when unreachable."""
    from mlflow.exceptions import MlflowException

    client = tracking.configure()
    try:
        client.search_registered_models(max_results=1)
    except (MlflowException, OSError) as error:
        raise RegistryError(
            f"cannot reach the MLflow registry at {settings.mlflow_tracking_uri()} ({error_cause(error)}); "
            "start it with `make services`, or set LOOPLINE_MLFLOW_TRACKING_URI to a running tracking server"
        ) from None
    return client


# Maximum length, in characters, of the cause that ``error_cause`` copies from a message.
MAX_CAUSE_CHARS = 200


def error_cause(error: BaseException) -> str:
    """Return the short cause of an MLflow or OS error, on one line.

    MLflow wraps a failed HTTP request in a message of several hundred characters that ends
    with the socket error, such as "[Errno 111] Connection refused" or "Read timed out.
    (read timeout=10)" (urllib3 2.x wording).
    """
    import re

    text = str(error)
    socket_error = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if socket_error:
        return socket_error.group(1).strip()
    timeout = re.search(r"read timeout=([\d.]+)", text)
    if timeout:
        return f"no response within {timeout.group(1)} s"
    first_line = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return first_line[:MAX_CAUSE_CHARS]


def champion_version(client, name: str):
    """Return the model version with the ``@champion`` alias, or None.

    The alias lookup is one registry call, so its cost does not grow with the number of runs.
    """
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def register_and_gate(config: LooplineConfig, summary: dict[str, Any], reason: str, cause: str = "scheduled") -> dict[str, Any]:
    """Register the trained model as a new version and promote it if it beats the champion."""
    import mlflow

    client = tracking.configure()
    name = config.model_name
    gate = config.registry
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
        "margin": gate.min_log_loss_improvement,
        "roc_auc_tolerance": gate.max_roc_auc_drop,
        "reason": reason,
        "cause": cause,
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
                # Days of this holdout that the champion trained or was selected on; above 0
                # the comparison favours the champion.
                "holdout_days_seen_by_champion": _days_seen_by(client, current, window.holdout_days),
            }
        )
        promote, evidence["decision"] = _compare(config, summary, champion_quality)

    for key, value in evidence.items():
        client.set_model_version_tag(name, version, f"gate.{key}", str(value))
    if promote:
        if current is not None:
            client.set_model_version_tag(name, version, "gate.previous_champion", str(current.version))
        client.set_registered_model_alias(name, CHAMPION, version)
        stamp_policy(client, config, version)
    else:
        client.set_registered_model_alias(name, CHALLENGER, version)

    from_version = str(current.version) if current is not None else None
    to_version = version if promote else from_version
    _append_audit(
        {"action": "promote" if promote else "reject", "model": name, "from_version": from_version, "to_version": to_version, **evidence}
    )
    logger.info("registry gate for %s version %s: %s", name, version, evidence["decision"])
    return {"version": version, "promoted": promote, "decision": evidence["decision"]}


def _compare(config: LooplineConfig, summary: dict[str, Any], champion: dict[str, Any]) -> tuple[bool, str]:
    """Return whether the challenger wins, and the decision text with both models' numbers."""
    gate = config.registry
    improvement = champion["log_loss"] - summary["holdout_log_loss"]
    wins_log_loss = improvement > gate.min_log_loss_improvement

    challenger_auc = summary["holdout_roc_auc"]
    champion_auc = champion["roc_auc"]
    # An undefined AUC (a one-class holdout) cannot veto: log loss alone decides then.
    auc_ok = challenger_auc is None or champion_auc is None or challenger_auc >= champion_auc - gate.max_roc_auc_drop

    promote = wins_log_loss and auc_ok
    verdict = "promoted" if promote else "kept as challenger"
    text = (
        f"{verdict}: log loss {summary['holdout_log_loss']:.5f} vs champion {champion['log_loss']:.5f} "
        f"(improvement {improvement:.5f}, margin {gate.min_log_loss_improvement}); ROC AUC "
        f"{_format(challenger_auc)} vs champion {_format(champion_auc)} (tolerance {gate.max_roc_auc_drop})"
    )
    return promote, text


def _days_seen_by(client, version, days: list[dt.date]) -> int:
    """Return how many of ``days`` fall before the holdout of ``version``'s training window."""
    run_id = version.tags.get("loopline.run_id") or version.run_id
    holdout_start = client.get_run(run_id).data.params.get("holdout_start") if run_id else None
    if not holdout_start:
        return 0
    return sum(1 for day in days if day < dt.date.fromisoformat(holdout_start))


def _format(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.5f}"


def _score_on_holdout(config: LooplineConfig, model_uri: str, window: training.TrainingWindow) -> dict:
    import mlflow

    feature_set = config.feature_set
    # The same labels as the challenger's own holdout metrics: those due by the window's cutoff.
    holdout = training.training_set(config, window.holdout_days, training.label_cutoff(config, window.end))
    model = mlflow.sklearn.load_model(model_uri)
    probability = model.predict_proba(holdout[feature_set.features])[:, 1]
    return metrics.quality_summary(holdout[feature_set.label], probability)


def promote(config: LooplineConfig, version: str, reason: str) -> dict[str, Any]:
    """Move ``@champion`` to ``version`` by hand, recording the version it replaces."""
    from mlflow.exceptions import MlflowException

    client = _client()
    name = config.model_name
    try:
        target = client.get_model_version(name, str(version))
    except MlflowException:
        known = sorted(int(item.version) for item in client.search_model_versions(f"name='{name}'"))
        raise RegistryError(
            f"model {name!r} has no version {version!r}; existing versions: {known or 'none'}"
        ) from None

    current = champion_version(client, name)
    if current is not None and str(current.version) == str(target.version):
        raise RegistryError(f"{name} version {version} already has @champion; nothing to do")
    if current is not None:
        client.set_model_version_tag(name, target.version, "gate.previous_champion", str(current.version))
    client.set_registered_model_alias(name, CHAMPION, str(target.version))
    client.set_model_version_tag(name, target.version, "gate.promoted_by_hand", reason)
    stamp_policy(client, config, str(target.version))
    from_version = str(current.version) if current is not None else None
    _append_audit(
        {"action": "promote", "cause": "cli", "model": name, "from_version": from_version, "to_version": str(target.version), "reason": reason}
    )
    logger.warning("promoted %s version %s to @champion by hand (was %s): %s", name, target.version, from_version, reason)
    return {"from_version": from_version, "to_version": str(target.version)}


def rollback(config: LooplineConfig, reason: str, cause: str = "rollback", evidence: dict[str, Any] | None = None) -> dict[str, Any]:
    """Move ``@champion`` back to the version it replaced, recorded on the current one.

    ``evidence`` (for a rollback by a monitoring rule: the rule, value and incident) goes
    into the audit log entry.
    """
    client = _client()
    name = config.model_name
    current = champion_version(client, name)
    if current is None:
        raise RegistryError(f"model {name!r} has no @champion to roll back; train and promote a model first")
    previous = current.tags.get("gate.previous_champion")
    if not previous:
        raise RegistryError(
            f"{name} version {current.version} was the first champion, so there is no earlier version to "
            "roll back to; promote another version with `loopline promote VERSION --reason ...` or retrain"
        )
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_model_version_tag(name, current.version, "gate.rolled_back", reason)
    _append_audit(
        {
            "action": "rollback",
            "cause": cause,
            "model": name,
            "from_version": str(current.version),
            "to_version": previous,
            "reason": reason,
            **(evidence or {}),
        }
    )
    logger.warning("rolled %s @champion back from version %s to %s: %s", name, current.version, previous, reason)
    return {"from_version": str(current.version), "to_version": previous}


def stamp_policy(client, config: LooplineConfig, version: str) -> None:
    """Record the monitoring policy in force on ``version`` as it becomes champion.

    Monitoring a day applies the policy stamped on the version that scored it, so a rerun
    of a past day decides under the policy of that day, whatever the config contains now.
    """
    policy = policy_of(config)
    client.set_model_version_tag(config.model_name, version, POLICY_VERSION_TAG, policy["policy_version"])
    client.set_model_version_tag(config.model_name, version, POLICY_TAG, json.dumps(policy, sort_keys=True))


def stamped_policy(version) -> dict | None:
    """Return the monitoring policy stamped on a model version, or None for an unstamped one."""
    text = version.tags.get(POLICY_TAG)
    return json.loads(text) if text else None


def champion_as_of(client, name: str, day: dt.date):
    """Return the model that served as champion for data day ``day``, or None.

    In daily operation that is ``@champion`` itself, because its training window ended
    before ``day``. A backfill must not score a past day with a model trained on it. Such
    a day gets the newest promoted version whose training window ended on or before it,
    skipping rolled-back versions.
    """
    current = champion_version(client, name)
    if current is None:
        return None
    current_end = window_end_of(current)
    if current_end is None or current_end <= day:
        return current

    best, best_end = None, None
    for version in client.search_model_versions(f"name='{name}'"):
        tags = version.tags
        promoted = tags.get("gate.decision", "").startswith("promoted") or "gate.promoted_by_hand" in tags
        if not promoted or "gate.rolled_back" in tags:
            continue
        end = window_end_of(version)
        if end is None or end > day:
            continue
        if best is None or (end, int(version.version)) > (best_end, int(best.version)):
            best, best_end = version, end
    return best


def window_end_of(version) -> dt.date | None:
    """Return the end of the training window of a model version, from its run's params."""
    client = tracking.configure()
    run_id = version.tags.get("loopline.run_id") or version.run_id
    if not run_id:
        return None
    params = client.get_run(run_id).data.params
    end = params.get("window_end")
    return dt.date.fromisoformat(end) if end else None
