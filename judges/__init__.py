"""Judges: what scores a candidate, and how scores become labels. Below the stages, above the backends.

  templates.py          versioned judge prompt templates (an id changes when the wording does)
  parsing.py            judge outputs into scores, never an invented one (score-token expectation, verdicts)
  absolute.py           absolute LLM judge from score-token probabilities, in process
  pairwise.py           pairwise LLM judge, always both orders
  served.py             the same judges on an OpenAI-compatible endpoint (log-probs or sampled verdicts)
  reward_model.py       reward-model judges: transformers, `vllm serve --runner pooling`, or an endpoint
  verifier.py           verifier judge: a response checked against its prompt's spec by program, code in a sandbox
  sandbox.py            that sandbox: bubblewrap namespaces and rlimits; values come out, verdicts are made outside
  constraints.py        IFEval-style instruction-following constraints: registry, spec API, strict and loose
  constraint_checks.py  the checkers behind constraints.py
  agreement.py          aggregating several judges and how much they agree
"""
