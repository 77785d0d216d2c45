"""The closed loop: did the data make a model better, and rounds that feed a policy its own pairs.

  evaluate.py    `prefsynth eval`: a policy against a baseline on held-out prompts (win rates, verifier accuracy)
  judge_eval.py  `prefsynth judge-eval`: the judges against human-labelled pairs
  iterate.py     `prefsynth iterate`: plan and records of iterative DPO rounds (flows/iterate.py runs them)
  online.py      `prefsynth train --online`: online DPO / IPO / IPO-MD, each step sampling, labelling and training
"""
