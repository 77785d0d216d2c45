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

import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def _version() -> str:
    """The version `prefsynth --version` prints and the manifest records (CHANGELOG.md names it last).

    From a source tree (pyproject.toml beside the packages, an editable install included) the file is read, since an
    editable install's metadata keeps the version of its last `pip install` and lags behind a bump; an installed
    wheel has no pyproject.toml beside it and answers from its metadata."""
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if pyproject.is_file():
        try:
            project = tomllib.loads(pyproject.read_text()).get("project", {})
        except (OSError, tomllib.TOMLDecodeError):
            project = {}
        if project.get("name") == "prefsynth" and isinstance(project.get("version"), str):
            return project["version"]
    try:
        return version("prefsynth")
    except PackageNotFoundError:
        return "0.0.0+unknown"


__version__ = _version()
