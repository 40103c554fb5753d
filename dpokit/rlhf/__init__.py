"""The classic RLHF baseline beside DPO: a Bradley–Terry reward model, and the estimators that
PPO with a KL penalty, RLOO and Best-of-N are built from.

    estimators     pure functions of tensors (KL estimators, GAE, PPO losses, RLOO, Best-of-N,
                   the Bradley–Terry loss, KL controllers); no model, no I/O
    reward_model   a scalar-head reward model from a causal LM: build, score, save, load

Formulas and sources: docs/rlhf.md.
"""
