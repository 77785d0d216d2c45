"""Reading a finished run: human review labels and what `prefsynth review` and `inspect` show.

  labels.py       the append-only review log and the one place labels change a dataset
  view.py         the review app's data as plain functions (flows/review/app.py renders them)
  inspect_run.py  `prefsynth inspect`: a run in the terminal
  where.py        the `--where` filter language: parsed to polars expressions, bounded, no SQL
"""
