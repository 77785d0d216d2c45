"""Verifiable prompts: prompts whose answers a program checks (the checkers are in judges/verifier.py).

  spec.py          the `verify` field of a prompt: its kinds, validation, canonical JSON
  generator.py     a seeded generator of verifiable prompts: arithmetic, units, dates, strings, code
  instructions.py  instruction-following prompts with IFEval-style constraints, split train/held-out by task
"""
