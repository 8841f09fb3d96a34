# Databricks notebook source
# MAGIC %md
# MAGIC # 01 · Data profile
# MAGIC
# MAGIC What the matcher is given: missing values per column, places per country, how far apart
# MAGIC the rows of one place lie (the blocking has to reach them) and how many rows a place has.
# MAGIC All logic is in `poimatch.research`; this notebook only calls it.
# MAGIC
# MAGIC | parameter | default | meaning |
# MAGIC | --- | --- | --- |
# MAGIC | `data` | *(empty)* | CSV or Delta path; empty: a labelled sample is generated |
# MAGIC | `rows`, `seed` | 3000, 42 | size and seed of the generated sample |
# MAGIC | `output` | `data/research/notebooks` | folder for the PNGs and CSVs |
# MAGIC | `set` | *(empty)* | configuration overrides, `section.key=value; ...` |
# MAGIC
# MAGIC On Databricks the parameters are widgets; locally they are environment variables
# MAGIC `POIMATCH_NB_<NAME>` (`POIMATCH_NB_DATA=... .venv/bin/python notebooks/01_data_profile.py`).
# MAGIC The cluster needs the `poimatch` wheel (see `deploy/`) and `POIMATCH_CONF_DIR`.

# COMMAND ----------

from poimatch import research

p = research.params(
    {"data": "", "rows": 3000, "seed": 42, "output": research.DEFAULT_OUTPUT, "set": ""}
)
research.show(p, title="parameters")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Research session
# MAGIC
# MAGIC Always the `research` environment (`conf/research.yaml`): its own storage root,
# MAGIC experiment and model name, and `poimatch.isolation` refuses any production write.
# MAGIC A CSV is validated like the ingest; rejected rows go to the *research* quarantine.

# COMMAND ----------

settings, spark = research.start("research", overrides=p["set"])
sample = research.load_sample(
    spark, settings, data=p["data"], rows=p["rows"], seed=p["seed"], labelled=False
)
folder = research.output_folder(p["output"])
research.show(list(sample.lines), title="input")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Profile
# MAGIC
# MAGIC Computed with Spark aggregations (it scales with the data); only the small results come
# MAGIC back. Distances are great-circle metres between every two rows of the same place.

# COMMAND ----------

prof = research.profile(sample.pois)
research.show(prof.overview, title="overview")
research.save_table(prof.overview, folder, "profile_overview")
research.save_table(prof.missing, folder, "profile_missing")
research.save_table(prof.countries, folder, "profile_countries")
research.save_table(prof.rows_per_place, folder, "profile_rows_per_place")
research.save_table(prof.distances, folder, "profile_duplicate_distances")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Missing values per column

# COMMAND ----------

research.show(prof.missing, title="missing values")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Places per country and rows per place

# COMMAND ----------

research.show(prof.countries, title="countries", max_rows=25)
research.show(prof.rows_per_place, title="rows per place")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Duplicate distances (log scale)
# MAGIC
# MAGIC The dotted lines mark 100 m and 1 km: rows of one place farther apart than the spatial
# MAGIC blocking reaches (`blocking.cell_m`, `k_nearest`) can only be found by the key passes.

# COMMAND ----------

research.show(prof.distances, title="duplicate distances")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Plots
# MAGIC
# MAGIC Saved as PNGs in the output folder (and displayed on Databricks).

# COMMAND ----------

figures = research.plot_profile(prof, folder)
research.show(figures, title="figures")
