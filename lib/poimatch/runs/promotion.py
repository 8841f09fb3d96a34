"""The promotion gate: a challenger becomes champion only if it measurably wins.

Both ``@challenger`` and ``@champion`` match the same fixed evaluation table, read at
a pinned Delta version. The challenger is promoted only when its IoU beats the
champion's by ``lifecycle.promotion_margin`` and no guard metric (pairwise precision,
candidate IoU ceiling) drops by more than ``lifecycle.guard_tolerance``. Every
decision is an MLflow run (both scores, the table and its version, the verdict and
why). On promotion the old champion keeps the alias ``previous``, so
:func:`rollback` is one alias move.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from poimatch import schema as S
from poimatch.config import Settings
from poimatch.io.tables import InputError, delta_version, is_delta_table
from poimatch.isolation import IsolationError, check_alias
from poimatch.lifecycle.evaluation import (
    candidate_report,
    iou,
    matches_to_pairs,
    pair_metrics,
    truth_pairs,
)
from poimatch.lifecycle.tracking import CHALLENGER, CHAMPION, configure_tracking
from poimatch.runs.workflows import match_pois
from poimatch.stages.plan import BATCH, Plan, small_plan_conf

__all__ = [
    "PREVIOUS",
    "Decision",
    "ModelScore",
    "decide",
    "read_eval_table",
    "rollback",
    "run_gate",
    "score_model",
]

PREVIOUS = "previous"

# Guard metrics: a challenger may not lose more than the tolerance on any of these.
GUARDS: tuple[str, ...] = ("pair_precision", "iou_ceiling")


@dataclass(frozen=True)
class ModelScore:
    """One model version measured on the evaluation table."""

    version: str
    iou: float
    pair_precision: float
    pair_recall: float
    iou_ceiling: float
    candidates_per_row: float


@dataclass(frozen=True)
class Decision:
    """The gate's verdict, with both scores and the evidence behind it."""

    promote: bool
    reasons: tuple[str, ...]
    challenger: ModelScore
    champion: ModelScore | None
    eval_table: str
    eval_version: int
    dry_run: bool
    run_id: str = ""

    def lines(self) -> list[str]:
        """Printable ``key=value`` lines for the job's output."""
        verdict = "promote" if self.promote else "keep"
        out = [f"eval_table={self.eval_table}@v{self.eval_version}"]
        for role, score in (("champion", self.champion), ("challenger", self.challenger)):
            if score is None:
                out.append(f"{role}=none")
                continue
            out.append(
                f"{role}=v{score.version} iou={score.iou:.4f} "
                f"pair_precision={score.pair_precision:.4f} "
                f"iou_ceiling={score.iou_ceiling:.4f}"
            )
        out += [f"reason={r}" for r in self.reasons]
        out.append(f"decision={verdict}{' (dry run: nothing moved)' if self.dry_run else ''}")
        if self.run_id:
            out.append(f"mlflow_run={self.run_id}")
        return out


def decide(
    champion: ModelScore | None, challenger: ModelScore, *, margin: float, tolerance: float
) -> tuple[bool, tuple[str, ...]]:
    """Promote iff IoU wins by ``margin`` and no guard metric drops by more than ``tolerance``.

    Returns:
        ``(promote, reasons)``; every failed rule is named in ``reasons``.
    """
    if champion is None:
        return True, ("no champion yet: the challenger becomes the first champion",)
    reasons = []
    gain = challenger.iou - champion.iou
    ok = gain >= margin
    reasons.append(
        f"iou {challenger.iou:.4f} vs {champion.iou:.4f}: gain {gain:+.4f} "
        f"{'>=' if ok else '<'} margin {margin:.4f}"
    )
    for name in GUARDS:
        new, old = getattr(challenger, name), getattr(champion, name)
        if new < old - tolerance:
            ok = False
            reasons.append(
                f"guard {name} regressed: {new:.4f} < {old:.4f} - tolerance {tolerance:.4f}"
            )
    return ok, tuple(reasons)


def read_eval_table(spark: SparkSession, path: str, version: int | None) -> tuple[DataFrame, int]:
    """The labelled evaluation rows at a pinned Delta version (default: the latest).

    Raises:
        InputError: not a Delta table, no such version, or no labelled rows.
    """
    if not is_delta_table(spark, path):
        raise InputError(
            f"{path}: evaluation table is not a Delta table; create it with "
            "`jobs/ingest.py --table eval --input <labelled csv>`"
        )
    latest = delta_version(spark, path)
    pinned = latest if version is None else version
    if not 0 <= pinned <= latest:
        raise InputError(f"{path}: no version {pinned} (latest is {latest})")
    frame = spark.read.format("delta").option("versionAsOf", pinned).load(path)
    if S.POI not in frame.columns:
        raise InputError(f"{path}: no {S.POI} column; the evaluation table must be labelled")
    labelled = frame.where(F.col(S.POI).isNotNull()).select(
        *[f.name for f in S.poi_table_schema().fields]
    )
    return labelled.cache(), pinned


def score_model(
    truth: DataFrame, model_uri: str, *, settings: Settings, plan: Plan = BATCH
) -> ModelScore:
    """Match ``truth`` with a registered model and measure it against the labels.
    ``plan``: how the match runs (the same output either way, see
    :class:`poimatch.stages.plan.Plan`)."""
    # the match job's call: a small plan's queries are prepared once per model version,
    # so a gate scoring a version again (a re-run, a dry run first) plans nothing again
    result = match_pois(truth, model_uri=model_uri, settings=settings, plan=plan)
    report = iou(result.matches, truth)
    pairs = pair_metrics(matches_to_pairs(result.matches), truth_pairs(truth))
    ceiling = candidate_report(
        result.scored.select(S.ID_L, S.ID_R), truth, max_iterations=settings.grouping.max_iterations
    )
    result.matches.unpersist()
    version = model_uri.rsplit("/", 1)[-1]
    return ModelScore(
        version=version,
        iou=report.iou,
        pair_precision=pairs.precision,
        pair_recall=pairs.recall,
        iou_ceiling=ceiling.iou_ceiling,
        candidates_per_row=ceiling.per_row,
    )


def _alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _require_production(settings: Settings, action: str) -> None:
    if settings.lifecycle.role == "research":
        raise IsolationError(
            f"{action} runs in a production environment only; "
            f"this is the research environment ({settings.env})"
        )
    check_alias(settings.model.name, CHAMPION)


def run_gate(
    spark: SparkSession,
    settings: Settings,
    *,
    eval_table: str | None = None,
    eval_version: int | None = None,
    dry_run: bool = False,
) -> Decision:
    """Score ``@challenger`` and ``@champion`` on the evaluation table and decide.

    Args:
        spark: the session.
        settings: production settings (``lifecycle`` holds the margin and tolerance).
        eval_table: Delta path of the labelled evaluation table (default
            ``<storage.root>/<lifecycle.eval_table>``).
        eval_version: pinned version of it (default: its latest, which is logged).
        dry_run: measure and record, but move no alias.

    Raises:
        IsolationError: run from the research environment.
        ValueError: the model has no challenger.
    """
    _require_production(settings, "the promotion gate")
    experiment_id = configure_tracking(settings.tracking)
    client = MlflowClient()
    name, life = settings.model.name, settings.lifecycle
    challenger_v = _alias_version(client, name, CHALLENGER)
    if challenger_v is None:
        raise ValueError(f"model {name} has no @{CHALLENGER}: train one first (jobs/train.py)")
    champion_v = _alias_version(client, name, CHAMPION)
    path = eval_table or settings.storage.table_path(life.eval_table)
    truth, pinned = read_eval_table(spark, path, eval_version)
    # an evaluation table of at most matching.small_max_rows rows is matched with the
    # small plan, as a match run or a training of that size (the same output)
    plan = Plan.for_rows(truth.count(), settings.matching.small_max_rows)
    with small_plan_conf(spark, enabled=plan.small):
        challenger = score_model(
            truth, f"models:/{name}/{challenger_v}", settings=settings, plan=plan
        )
        champion = (
            score_model(truth, f"models:/{name}/{champion_v}", settings=settings, plan=plan)
            if champion_v is not None
            else None
        )
    truth.unpersist()
    promote, reasons = decide(
        champion, challenger, margin=life.promotion_margin, tolerance=life.guard_tolerance
    )
    with mlflow.start_run(experiment_id=experiment_id, run_name="promotion-gate") as run:
        mlflow.set_tags(
            {
                "poimatch.stage": "promote",
                "poimatch.env": settings.env,
                "poimatch.decision": "promote" if promote else "keep",
                "poimatch.dry_run": str(dry_run).lower(),
            }
        )
        mlflow.log_params(
            {
                "model.name": name,
                "challenger_version": challenger_v,
                "champion_version": champion_v or "none",
                "eval_table": path,
                "eval_version": pinned,
                "plan": plan.name,
                "promotion_margin": life.promotion_margin,
                "guard_tolerance": life.guard_tolerance,
            }
        )
        for role, score in (("challenger", challenger), ("champion", champion)):
            if score is not None:
                mlflow.log_metrics(
                    {f"{role}_{k}": v for k, v in asdict(score).items() if k != "version"}
                )
        mlflow.log_metric("promoted", float(promote and not dry_run))
        decision = Decision(promote, reasons, challenger, champion, path, pinned, dry_run)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "decision.json"
            out.write_text(json.dumps(asdict(decision), indent=2))
            mlflow.log_artifact(str(out))
        run_id = run.info.run_id
    if promote and not dry_run:
        if champion_v is not None:
            client.set_registered_model_alias(name, PREVIOUS, champion_v)
        client.set_registered_model_alias(name, CHAMPION, challenger_v)
        client.delete_registered_model_alias(name, CHALLENGER)
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        client.set_model_version_tag(name, challenger_v, "poimatch.promoted_at", stamp)
        client.set_model_version_tag(name, challenger_v, "poimatch.promotion_run", run_id)
    return Decision(promote, reasons, challenger, champion, path, pinned, dry_run, run_id)


def rollback(settings: Settings) -> tuple[str, str]:
    """Point ``@champion`` back at ``@previous`` (and ``@previous`` at the demoted one).

    Running it twice undoes itself. Returns ``(demoted_version, restored_version)``.

    Raises:
        ValueError: there is no ``@previous`` to roll back to.
    """
    _require_production(settings, "rollback")
    experiment_id = configure_tracking(settings.tracking)
    client = MlflowClient()
    name = settings.model.name
    previous = _alias_version(client, name, PREVIOUS)
    current = _alias_version(client, name, CHAMPION)
    if previous is None or current is None:
        raise ValueError(f"model {name}: no @{PREVIOUS} to roll back to (nothing was promoted)")
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_registered_model_alias(name, PREVIOUS, current)
    with mlflow.start_run(experiment_id=experiment_id, run_name="rollback"):
        mlflow.set_tags({"poimatch.stage": "rollback", "poimatch.env": settings.env})
        mlflow.log_params({"model.name": name, "from_version": current, "to_version": previous})
    return current, previous
