"""Optimizer studies: grids of optimizers x learning rates x seeds, trained, stored and resumed.

``load_study`` reads a study file (TOML), ``build_study`` makes one from Python (objects allowed);
``run_study`` trains what is not finished yet with an
executor (sequential, vectorized, processes, ray) into one SQLite store; ``load_results`` reads a
store as pandas DataFrames and ``export_results`` writes them as CSV or Parquet; ``train_group``
trains runs that differ only in learning rate and seed (constrained: dual learning rate and penalty
too) in one vectorized pass.
"""

from optimlab.engine.group import train_group, vectorizable_key
from optimlab.study.results import StudyResults, export_results, load_results
from optimlab.study.runner import StudyOutcome, run_study
from optimlab.study.spec import ExecutorSpec, StudySpec, build_study, load_study, parse_study
from optimlab.study.store import StudyStore

__all__ = [
    "ExecutorSpec",
    "StudyOutcome",
    "StudyResults",
    "StudySpec",
    "StudyStore",
    "build_study",
    "export_results",
    "load_results",
    "load_study",
    "parse_study",
    "run_study",
    "train_group",
    "vectorizable_key",
]
