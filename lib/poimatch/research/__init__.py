"""Research helpers: everything the notebooks in ``notebooks/`` do, as library functions.

One module per concern (``notebook`` plumbing, ``data``, ``profile``, ``experiment``,
``errors``); their public names are re-exported here, which is what the notebooks import.

The notebooks (Databricks source format, also runnable as plain scripts) hold no logic:
they read their parameters with :func:`params`, start a research session with
:func:`start` and call the functions below, which reuse the pipeline's own stages
(blocking, features, scoring, training, evaluation, tracking) rather than copies of them.

* :func:`start` loads a **research** environment only (``conf/research.yaml``: its own
  storage root, MLflow experiment and registered model) and arms
  :mod:`poimatch.isolation`, so nothing started from a notebook can write a production
  table or move the production ``champion`` alias.
* :func:`params` reads Databricks widgets when ``dbutils`` exists, else environment
  variables ``POIMATCH_NB_<NAME>`` (locally and in CI), else the defaults.
* Data: :func:`load_sample` reads a CSV or Delta path, or generates a small labelled
  sample with :mod:`poimatch.sample.generator` when no path is given.
* Data profile: :func:`profile` (Spark aggregations, small pandas results) and
  :func:`plot_profile`.
* Experiments: :func:`run_variants` trains a baseline and variants (settings overrides)
  with :func:`poimatch.runs.workflows.train_model`; :func:`compare_runs` reads them back with
  ``mlflow.search_runs``; :func:`plot_comparison`.
* Error analysis: :func:`error_analysis` (worst false matches, missed matches, true pairs
  never blocked, with XGBoost per-pair feature contributions) and :func:`plot_errors`.

Every plot is a matplotlib figure saved as a PNG under an output folder and shown with
Databricks' ``display`` when it exists; :func:`show` prints a table where it does not.

Example:
    >>> from poimatch import research  # doctest: +SKIP
    >>> p = research.params({"data": "", "rows": 3000, "output": research.DEFAULT_OUTPUT})
    >>> settings, spark = research.start("research", overrides=p.get("set", ""))
    >>> sample = research.load_sample(spark, settings, data=p["data"], rows=p["rows"])
    >>> research.plot_profile(research.profile(sample.pois), research.output_folder(p["output"]))
"""

from __future__ import annotations

from poimatch.research.data import (
    Sample,
    load_sample,
)
from poimatch.research.errors import (
    BIAS,
    ERROR_COLUMNS,
    FALSE_MATCH,
    MISSED_MATCH,
    NEVER_BLOCKED,
    ErrorAnalysis,
    ensure_model,
    error_analysis,
    feature_contributions,
    plot_errors,
)
from poimatch.research.experiment import (
    COMPARISON_METRICS,
    TAG_COMPARISON,
    TAG_OVERRIDES,
    TAG_VARIANT,
    Experiment,
    VariantRun,
    compare_runs,
    plot_comparison,
    run_variants,
)
from poimatch.research.notebook import (
    DEFAULT_OUTPUT,
    PARAM_PREFIX,
    RESEARCH_ENV,
    empty_note,
    notebook_global,
    output_folder,
    override_list,
    params,
    require_research,
    save_figure,
    save_table,
    show,
    start,
    with_overrides,
)
from poimatch.research.profiling import (
    Profile,
    plot_profile,
    profile,
)

__all__ = [
    "BIAS",
    "COMPARISON_METRICS",
    "DEFAULT_OUTPUT",
    "ERROR_COLUMNS",
    "ErrorAnalysis",
    "Experiment",
    "FALSE_MATCH",
    "MISSED_MATCH",
    "NEVER_BLOCKED",
    "PARAM_PREFIX",
    "Profile",
    "RESEARCH_ENV",
    "Sample",
    "TAG_COMPARISON",
    "TAG_OVERRIDES",
    "TAG_VARIANT",
    "VariantRun",
    "compare_runs",
    "empty_note",
    "ensure_model",
    "error_analysis",
    "feature_contributions",
    "load_sample",
    "notebook_global",
    "output_folder",
    "override_list",
    "params",
    "plot_comparison",
    "plot_errors",
    "plot_profile",
    "profile",
    "require_research",
    "run_variants",
    "save_figure",
    "save_table",
    "show",
    "start",
    "with_overrides",
]
