"""prefsynth's library. The path says the role; each package's docstring maps its modules, and
docs/architecture.md has the layers and how to add a stage. Flows in `flows/` only wire these together.

  core/        the stage runner, table contracts, run storage, funnel, accounting
  config/      the typed run configuration, every field documented once
  backends/    generation backends and the one factory stages build them with; model references
  sampling/    how a prompt's candidates are sampled (plain, pools, verbalized)
  curation/    scores from judgments, pair rules, dedup, length bias and the data reports
  verifiable/  prompts whose answers a program checks
  stages/      one module per stage, and their order
  train/       the DPO trainer
  review/      human review labels, `review` and `inspect`
  publish/     shards, manifest, card, Hub, growing datasets
  loop/        eval, judge-eval and iterate
  errors.py    the error hierarchy (every error names the value and the fix)
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("prefsynth")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+src"
