# Databricks notebook source
# MAGIC %md
# MAGIC # 03 · Error analysis
# MAGIC
# MAGIC Where does a model go wrong, and why? On labelled data the candidate pairs are blocked
# MAGIC with the model's own blocking settings, featured and scored exactly as the match job
# MAGIC does, then compared with the truth (`point_of_interest`):
# MAGIC
# MAGIC * **false matches**: pairs of different places with the highest scores (at or above
# MAGIC   the model's threshold);
# MAGIC * **missed matches**: pairs of the same place with the lowest scores;
# MAGIC * **never blocked**: pairs of the same place that blocking never proposed (no model can
# MAGIC   find them), farthest apart first.
# MAGIC
# MAGIC For each scored pair, XGBoost's per-pair feature contributions (`pred_contribs`,
# MAGIC log-odds) name the features that pushed the score the wrong way. All logic is in
# MAGIC `poimatch.research`; nothing is written except the PNGs and CSVs in the output folder.
# MAGIC
# MAGIC | parameter | default | meaning |
# MAGIC | --- | --- | --- |
# MAGIC | `model` | *(empty)* | model URI; empty: newest research model (trained if none) |
# MAGIC | `data` | *(empty)* | labelled CSV or Delta path; empty: a labelled sample is generated |
# MAGIC | `rows`, `seed` | 3000, 43 | the generated sample (another seed than the training data) |
# MAGIC | `top` | 15 | pairs listed per kind |
# MAGIC | `output` | `data/research/notebooks` | folder for the PNGs and CSVs |
# MAGIC | `set` | *(empty)* | configuration overrides, `section.key=value; ...` |

# COMMAND ----------

from poimatch import research

p = research.params(
    {
        "model": "",
        "data": "",
        "rows": 3000,
        "seed": 43,
        "top": 15,
        "output": research.DEFAULT_OUTPUT,
        "set": "",
    }
)
research.show(p, title="parameters")

# COMMAND ----------

settings, spark = research.start("research", overrides=p["set"])
model_uri = research.ensure_model(spark, settings, p["model"], rows=p["rows"])
sample = research.load_sample(spark, settings, data=p["data"], rows=p["rows"], seed=p["seed"])
folder = research.output_folder(p["output"])
research.show([model_uri, *sample.lines], title="model and input")

# COMMAND ----------

analysis = research.error_analysis(
    sample.pois, settings=settings, model_uri=model_uri, top=p["top"]
)
research.save_table(analysis.summary, folder, "error_summary")
research.save_table(analysis.errors, folder, "error_analysis")
research.save_table(analysis.contributions, folder, "error_contributions")
research.show(analysis.summary, title="summary")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Worst false matches, missed matches, pairs never blocked
# MAGIC
# MAGIC `drivers`: `feature=value (contribution)`, the features that pushed the score the
# MAGIC wrong way (up for a false match, down for a missed match). A missed pair can still end
# MAGIC up in the right group through other pairs of its place (connected components).

# COMMAND ----------

research.show(analysis.errors, title="errors", max_rows=60)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Scores by truth, and the features behind the errors

# COMMAND ----------

research.plot_errors(analysis, folder)
