# Databricks notebook source
# MAGIC %md
# MAGIC # 02 · Experiment: a variant against the baseline
# MAGIC
# MAGIC Trains the baseline (the research configuration as it is) and a variant (the same plus
# MAGIC a few overrides, e.g. a smaller `blocking.k_nearest` or `model.max_depth`) on the same
# MAGIC labelled data, each with the production training code
# MAGIC (`poimatch.runs.workflows.train_model`: same folds, threshold choice and MLflow
# MAGIC logging). Both runs land in the **research**
# MAGIC experiment and register versions of the **research** model only; then they are read
# MAGIC back with `mlflow.search_runs` and compared. All logic is in `poimatch.research`.
# MAGIC
# MAGIC | parameter | default | meaning |
# MAGIC | --- | --- | --- |
# MAGIC | `data` | *(empty)* | labelled CSV or Delta path; empty: a labelled sample is generated |
# MAGIC | `rows`, `seed` | 3000, 42 | size and seed of the generated sample |
# MAGIC | `variant` | `blocking.k_nearest=5` | the variant's overrides, `section.key=value; ...` |
# MAGIC | `output` | `data/research/notebooks` | folder for the PNG and CSV |
# MAGIC | `set` | *(empty)* | overrides for both runs, `section.key=value; ...` |
# MAGIC
# MAGIC On Databricks the parameters are widgets; locally they are environment variables
# MAGIC `POIMATCH_NB_<NAME>`. A model found here reaches production only as a change to the
# MAGIC library or the configuration, trained and promoted by the production jobs.

# COMMAND ----------

from poimatch import research

p = research.params(
    {
        "data": "",
        "rows": 3000,
        "seed": 42,
        "variant": "blocking.k_nearest=5",
        "output": research.DEFAULT_OUTPUT,
        "set": "",
    }
)
research.show(p, title="parameters")

# COMMAND ----------

settings, spark = research.start("research", overrides=p["set"])
sample = research.load_sample(spark, settings, data=p["data"], rows=p["rows"], seed=p["seed"])
folder = research.output_folder(p["output"])
research.show(list(sample.lines), title="input")
research.show(
    [settings.tracking.experiment, settings.model.name, settings.storage.root], title="research"
)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Train baseline and variant
# MAGIC
# MAGIC Both runs are tagged `poimatch.comparison=<id>`, `poimatch.variant` and
# MAGIC `poimatch.overrides`, so they can be found together later. Each registers a version
# MAGIC of the research model as `challenger` (research never names a champion); the
# MAGIC baseline's `model_uri` is what `03_error_analysis` takes as its `model` parameter.

# COMMAND ----------

experiment = research.run_variants(
    sample.pois,
    settings=settings,
    variants={"baseline": "", "variant": p["variant"]},
    data_versions={"train_input": sample.fingerprint},
)
runs = experiment.table()
research.save_table(runs, folder, "experiment_runs")
research.show(runs, title="runs")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Compare in MLflow
# MAGIC
# MAGIC Read back from the tracking store: IoU (validation fold, the real Spark grouping), pair
# MAGIC precision/recall at the chosen threshold, and the candidate stage (candidates per row,
# MAGIC pair recall, IoU ceiling), plus every parameter that differs between the runs.

# COMMAND ----------

comparison = research.compare_runs(settings, comparison=experiment.comparison)
research.save_table(comparison, folder, "experiment_comparison")
research.show(comparison, title="comparison")

# COMMAND ----------

research.plot_comparison(comparison, folder)
