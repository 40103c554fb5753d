"""The classic RLHF baseline beside DPO, on the same data and the same ground truth.

    estimators        pure functions of tensors (KL estimators, GAE, PPO losses, RLOO, Best-of-N,
                      the Bradley–Terry loss, KL controllers); no model, no I/O
    reward_model      a scalar-head reward model from a causal LM: build, score, save, load
    rollout           rollouts as tensors; per-token log-probs and values at completion positions
    ppo, rloo         the two online trainers (+ ppo_config, rloo_config, online_config)
    online            what both share while running: reward checks, stops, the round loop
    online_checkpoint their checkpoints (safetensors + JSON) and exact resume
    ppo_run           prompts, models and reward of an online run, from its config
    best_of_n         Best-of-N curves from one set of reference samples

Formulas and sources: docs/rlhf.md.
"""
