"""Verifiable prompts: prompts whose answers a program checks (the checkers are in judges/verifier.py).

  spec.py       the `verify` field of a prompt: its kinds, validation, canonical JSON
  generator.py  a seeded generator of verifiable prompts (`python -m pipeline.verifiable.generator`)
"""
