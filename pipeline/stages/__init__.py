"""The stages of a dataset build: one module per stage, each its declaration (`STAGE`) plus its logic.

  order.py          the order they run in (`STAGES`), checked at import
  synth.py          synth: a prompt set made by a model (`input.path: synth:`)
  conversation.py   conversation: prompts grown into simulated multi-turn conversations
  prompts.py        prompts: the input file or dataset into the prompts table (and bundled data)
  prompt_filter.py  prompt_filter: decontamination, near-copies, near-duplicates
  self_critique.py  self_critique: revision-vs-original pairs with reward-model labels
  generate.py       generate: N candidates per prompt
  judge.py          judge: every judge scores the candidates
  pair.py           pair: preference pairs from judged candidates
  ches.py           ches: likelihood-displacement scores and reference log-probs
  rationale.py      rationale: why chosen beat rejected, in a sentence
  input_text.py     not a stage: JSON too deep to read, characters no prompt may hold (NUL, lone surrogates)
  turns.py          not a stage: which assistant turns of a conversation input generate branches at
  preflight.py      not a stage: the checks `prefsynth run` makes before any stage starts

A stage builds its backends through pipeline/backends/factory.py and never calls `make_backend` itself.
Publishing (shards, manifest, card) follows the last stage: pipeline/publish/.
"""
