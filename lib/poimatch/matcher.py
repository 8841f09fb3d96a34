"""The one facade the commands, the REST service and the notebooks use.

A :class:`Matcher` holds the configuration and (built on first use) the Spark session;
each verb of the product is one method returning a typed result (``lines()`` gives what
a command prints). Jobs parse arguments and format; the service keeps one Matcher and a
warm model; a notebook does::

    >>> from poimatch import Matcher  # doctest: +SKIP
    >>> m = Matcher.from_config("research")
    >>> report = m.match("pois.csv", output_csv="/tmp/out.csv")
    >>> report.candidates, report.written["output"]

Underneath, the stages (:mod:`poimatch.stages`) run in the order the runs
(:mod:`poimatch.runs`) give them; the model's life (training, tracking, promotion) is
:mod:`poimatch.lifecycle`; tables, contracts and the lookup layout are :mod:`poimatch.io`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from poimatch.config import BlockingSettings, Settings, load_settings

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

    from poimatch.io.ingest import IngestReport
    from poimatch.io.lookup import HeldLookup, KnownTable
    from poimatch.runs.batch import AgainstReport, Evaluation, LoadedPois, MatchInput, MatchReport
    from poimatch.runs.blocking_report import BlockingReport
    from poimatch.runs.explain import Explanation
    from poimatch.runs.promotion import Decision
    from poimatch.runs.workflows import MatchResult, TrainResult
    from poimatch.stages.plan import Plan
    from poimatch.stages.scoring import MatchModel
    from poimatch.stages.spec import MatchingSpec

__all__ = ["BlockingRun", "LoadedModel", "Matcher", "ScoringModel", "TrainRun"]


class ScoringModel(Protocol):
    """What matching needs of a loaded model: its scorer and its matching spec
    (a :class:`LoadedModel`, or the service's warm model)."""

    @property
    def model(self) -> MatchModel: ...

    @property
    def spec(self) -> MatchingSpec: ...


@dataclass(frozen=True)
class LoadedModel:
    """A registered model version, loaded: its scorer and its matching spec."""

    uri: str
    model: MatchModel
    spec: MatchingSpec
    info: dict[str, Any]


@dataclass(frozen=True)
class TrainRun:
    """A training run: what each input gave, then the trained and registered model."""

    inputs: tuple[LoadedPois, ...]
    result: TrainResult

    def lines(self) -> list[str]:
        """Printable figures: each input's, then the model's."""
        return [line for loaded in self.inputs for line in loaded.lines()] + self.result.lines()


@dataclass(frozen=True)
class BlockingRun:
    """A blocking report (:func:`poimatch.runs.blocking_report.blocking_report`) and
    what it was run on: the input's rows per status and the blocking settings used."""

    input: MatchInput
    blocking: BlockingSettings
    blocking_from: str  # the model URI, or "configuration"
    report: BlockingReport

    def lines(self) -> list[str]:
        """Printable figures."""
        return [
            *self.input.lines(),
            f"blocking={self.blocking_from} {self.blocking.model_dump_json()}",
            *self.report.lines(),
        ]


class Matcher:
    """The product's verbs over one configuration and one Spark session.

    ``spark``: an existing session (a notebook's, the suite's); without one it is built
    from ``settings.spark`` on first use, so a verb that needs no Spark (a rollback)
    starts none. Table arguments take a path or a ``catalog.schema.table`` name.
    """

    def __init__(self, settings: Settings, spark: SparkSession | None = None) -> None:
        self.settings = settings
        self._spark = spark

    @classmethod
    def from_config(
        cls,
        env: str | None = None,
        overrides: Sequence[str] = (),
        *,
        spark: SparkSession | None = None,
    ) -> Matcher:
        """Settings of ``env`` (``conf/<env>.yaml`` over ``base.yaml``) with ``overrides``
        (``section.key=value``), the production guard armed for research settings."""
        from poimatch.isolation import enforce

        settings = load_settings(env, overrides)
        enforce(settings)
        return cls(settings, spark)

    @property
    def spark(self) -> SparkSession:
        """The session: the one given, else one built from the settings (once)."""
        if self._spark is None:
            from poimatch.session import build_session

            self._spark = build_session(self.settings.spark)
        return self._spark

    # ------------------------------------------------------------------- the model

    def model_uri(self, uri: str | None = None) -> str:
        """``uri``, or the configured model's ``@champion``."""
        from poimatch.lifecycle.tracking import default_model_uri

        return uri or default_model_uri(self.settings.model.name)

    def load_model(self, uri: str | None = None) -> LoadedModel:
        """The registered version ``uri`` (default: the champion), loaded once per process."""
        from poimatch.lifecycle.tracking import configure_tracking, load_matcher

        configure_tracking(self.settings.tracking)
        resolved = self.model_uri(uri)
        model, spec, info = load_matcher(resolved)
        return LoadedModel(resolved, model, spec, info)

    # ----------------------------------------------------------------------- data

    def _source(self, path: str | None) -> str:
        storage = self.settings.storage
        return path or storage.table_path(storage.pois_table)

    def ingest(self, csv: str, *, table: str | None = None) -> IngestReport:
        """Check ``csv`` and MERGE it into the POI table (or ``table``, a name under the
        storage root); rows breaking a rule go to the quarantine with their reason."""
        from poimatch.io.ingest import ingest_file

        storage = self.settings.storage
        return ingest_file(
            self.spark,
            csv,
            pois_path=storage.table_path(table or storage.pois_table),
            quarantine_path=storage.table_path(storage.quarantine_table),
            validations=storage.validations_path(),
        )

    def load(self, path: str | None = None, *, labelled: bool = False) -> LoadedPois:
        """Validated POIs of a CSV or Delta table (default: the POI table); a CSV's
        rejected rows go to the quarantine. ``labelled``: ``point_of_interest`` required."""
        from poimatch.runs.batch import load_pois

        storage = self.settings.storage
        return load_pois(
            self.spark,
            self._source(path),
            quarantine_path=storage.table_path(storage.quarantine_table),
            require_labels=labelled,
        )

    # ------------------------------------------------------------------ the verbs

    def train(self, inputs: Sequence[str], *, run_name: str | None = None) -> TrainRun:
        """Train on labelled tables or CSVs, track the run, register the model
        (first version ``@champion``, later ones ``@challenger``)."""
        from poimatch.io.tables import input_fingerprint
        from poimatch.runs.workflows import train_model

        loaded, versions = [], {}
        for i, path in enumerate(inputs):
            loaded.append(self.load(path, labelled=True))
            versions[f"train_input{i if i else ''}"] = input_fingerprint(self.spark, path)
        result = train_model(
            [x.pois for x in loaded],
            settings=self.settings,
            data_versions=versions,
            run_name=run_name,
        )
        return TrainRun(tuple(loaded), result)

    def match(
        self,
        input_path: str | None = None,
        *,
        output_csv: str | None = None,
        table: str | None = None,
        model_uri: str | None = None,
        incremental: bool = False,
        pairs_table: str | None = None,
    ) -> MatchReport:
        """Match a table or file and write only what is named (the POI table's own run,
        ``input_path`` None, updates the ``matches`` and lookup tables):
        :func:`poimatch.runs.batch.run_match`."""
        from poimatch.runs.batch import run_match

        return run_match(
            self.spark,
            self.settings,
            input_path=input_path,
            output_csv=output_csv,
            model_uri=model_uri,
            incremental=incremental,
            table=table,
            pairs_table=pairs_table,
        )

    def match_against(
        self,
        input_path: str,
        *,
        output_csv: str | None,
        against: str = "pois",
        model_uri: str | None = None,
    ) -> AgainstReport:
        """Match a file with itself and with the POI table (through its lookup table at a
        pinned version): :func:`poimatch.runs.batch.run_match_against`."""
        from poimatch.runs.batch import run_match_against

        return run_match_against(
            self.spark,
            self.settings,
            input_path=input_path,
            against=against,
            output_csv=output_csv,
            model_uri=model_uri,
        )

    def match_frame(
        self,
        pois: DataFrame,
        *,
        model: ScoringModel | None = None,
        plan: Plan | None = None,
        keep_pair_features: bool = False,
        reuse_plan: bool = False,
        normalized: bool = False,
        compiled_pairs: bool = False,
    ) -> MatchResult:
        """Match typed POIs in memory (nothing read or written): the service's and the
        notebooks' verb. ``model``: a loaded version (default: the champion); ``plan``:
        how the stages run (default: the batch plan), the output is the same;
        ``reuse_plan`` (small plan): the pair query planned once per model and re-run
        (what a warm service does); ``normalized``: ``pois`` are that model's points
        already; ``compiled_pairs``: that query compiled to Java code once (see
        :func:`poimatch.runs.workflows.match_with_model`)."""
        from poimatch.runs.workflows import match_with_model
        from poimatch.stages.plan import BATCH

        loaded = model or self.load_model()
        matching, grouping = self.settings.matching, self.settings.grouping
        return match_with_model(
            pois,
            model=loaded.model,
            spec=loaded.spec,
            max_iterations=grouping.max_iterations,
            local_max_edges=grouping.local_max_edges,
            link_only=matching.link_only,
            broadcast_max_rows=matching.broadcast_max_rows,
            keep_pair_features=keep_pair_features,
            plan=plan or BATCH,
            reuse_plan=reuse_plan,
            normalized=normalized,
            compiled_pairs=compiled_pairs,
        )

    def match_frame_against(
        self,
        pois: DataFrame,
        known: KnownTable,
        *,
        model: ScoringModel | None = None,
        reuse_plan: bool = False,
        held: HeldLookup | None = None,
    ) -> pd.DataFrame:
        """Typed POIs matched with each other and with a pinned lookup table (small plan):
        ``id``, ``matches``, ``known_ids``, ``known_groups`` per row. ``reuse_plan``: as
        in :meth:`match_frame` (the service's warm requests); ``held``: the table as held
        on the driver (:func:`poimatch.io.lookup.hold_lookup`), read instead of its files."""
        from poimatch.runs.against import match_against

        loaded = model or self.load_model()
        return match_against(
            pois,
            known,
            model=loaded.model,
            spec=loaded.spec,
            max_iterations=self.settings.grouping.max_iterations,
            local_max_edges=self.settings.grouping.local_max_edges,
            link_only=self.settings.matching.link_only,
            reuse_plan=reuse_plan,
            held=held,
        ).matches

    def evaluate(self, submission: str, truth: str) -> Evaluation:
        """IoU and pair metrics of a submission (``id,matches``) against labelled truth."""
        from poimatch.runs.batch import run_evaluate

        return run_evaluate(self.spark, submission, truth)

    def explain(
        self,
        id_a: str,
        id_b: str,
        *,
        input_path: str | None = None,
        model_uri: str | None = None,
    ) -> Explanation:
        """Each comparison's push on one pair's score (XGBoost ``pred_contribs``); the rows
        are read from ``input_path`` (default: the POI table), nothing is written."""
        from poimatch.runs.batch import load_match_input
        from poimatch.runs.explain import explain_pair

        data = load_match_input(self.spark, self._source(input_path))
        try:
            loaded = self.load_model(model_uri)
            return explain_pair(data.pois, id_a, id_b, model=loaded.model, spec=loaded.spec)
        finally:
            data.release()

    def blocking_report(
        self, *, input_path: str | None = None, model_uri: str | None = None
    ) -> BlockingRun:
        """Pairs per blocking pass and candidates per row, before any run: with the
        configuration's blocking, or ``model_uri``'s (what its match runs use)."""
        from poimatch.runs.batch import load_match_input
        from poimatch.runs.blocking_report import blocking_report

        blocking = self.settings.blocking
        if model_uri:
            blocking = BlockingSettings.model_validate(self.load_model(model_uri).spec.blocking)
        data = load_match_input(self.spark, self._source(input_path))
        try:
            report = blocking_report(data.pois, blocking)
        finally:
            data.release()
        return BlockingRun(data, blocking, model_uri or "configuration", report)

    def promote(
        self,
        *,
        eval_table: str | None = None,
        eval_version: int | None = None,
        dry_run: bool = False,
    ) -> Decision:
        """The promotion gate: challenger and champion on the pinned evaluation table."""
        from poimatch.runs.promotion import run_gate

        return run_gate(
            self.spark,
            self.settings,
            eval_table=eval_table,
            eval_version=eval_version,
            dry_run=dry_run,
        )

    def rollback(self) -> tuple[str, str]:
        """``@champion`` back to ``@previous``: ``(demoted, restored)`` versions. Starts no
        Spark session."""
        from poimatch.runs.promotion import rollback

        return rollback(self.settings)
