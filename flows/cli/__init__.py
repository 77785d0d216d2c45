"""The `prefsynth` command line (console script `flows.cli:main`, or `python -m flows.cli`).

  args.py        every subcommand, its options and help text (argparse; `--help` from the config fields)
  commands.py    `main(argv)`: runs the commands over the flows and pipeline/, one-line errors
  runtime.py     how a command runs a flow: its own guarded Prefect API, clean interrupts
  api_server.py  that Prefect API, in a process that cannot outlive the command
  docs_gen.py    the docs' generated reference pages (config keys, commands) from the config models and args.py
"""

from flows.cli.commands import main

__all__ = ["main"]
