"""Reward service: a reward model (SFT backbone + scalar head) learned online from thumbs, serving scores.

See reward_service/README.md for the guarantees, configuration and metrics;
run ``python -m reward_service.cli serve``.
"""
