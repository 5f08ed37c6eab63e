"""Phase 2: reinforcement learning against trading rewards (GRPO).

``environment`` turns the dataset's point-in-time prompts and the price data into episodes
(each prompt with the forward return its action will earn and the volatility known when it was
written), ``rewards`` scores completions in TRL's reward-function signature, and
``curriculum`` orders the episodes easy first by what was known at the decision.
"""
