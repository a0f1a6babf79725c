"""Controlled experiments (``mlops experiment``): plan the variants, run them as jobs, compare them.

- :mod:`mlops.experiment.plan`: factors and their levels (train_cnn.py hyperparameters), the variants and
  seeds, checked against the script's own TrainConfig before anything runs;
- :mod:`mlops.experiment.results`: each job's figures from the store, the pandas tables and the noise rule;
- :mod:`mlops.experiment.report`: report.html (jinja2, the executor's house style), results.csv, runs.csv.

The jobs themselves are an execution of the experiment pipeline (pipelines/image_classification/experiment.py)
run by the local executor, so they are recorded, logged and listed like every other job.
"""
