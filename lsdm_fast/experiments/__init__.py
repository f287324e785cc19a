"""Named experiments: LSDM against its baselines over seeds, a markdown table (mean ± std over
seeds) and figures. `lsdm experiment NAME` is `run_experiment(NAME, ...)`.

- registry.py: the methods, the budgets and the list of experiments (what is compared, on what);
- runner.py: one (setting, seed) cell fits every method on the same split with the same budgets;
- evaluate.py: the metrics of one method's samples;
- report.py: tables, figures, README.md and results.json.

Evaluation nets (the FD feature CNN and the accuracy judge) are trained once on the full labelled
training set and cached (lsdm_fast.metrics).
"""
from .registry import DIGITS, EXPERIMENTS, LABELS, METHODS, QUICK, Budget, Experiment, Setting, lsdm_config
from .report import aggregate, markdown_table
from .runner import run_experiment

__all__ = ["DIGITS", "EXPERIMENTS", "LABELS", "METHODS", "QUICK", "Budget", "Experiment", "Setting", "aggregate",
           "lsdm_config", "markdown_table", "run_experiment"]
