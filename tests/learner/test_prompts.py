"""The gates' prompts are never among the simulated users' prompts: the gates measure generalisation."""

from learner.gates import load_prompts
from learner.settings import Settings
from loop.users import load_prompts as users_prompts


def test_gate_prompts_are_not_users_prompts():
    cfg = Settings()
    users = {p.strip().lower() for p in users_prompts()}
    gate = [
        m[-1]["content"] for path in (cfg.heldout_prompts, cfg.canary_prompts) for m in load_prompts(path)
    ]
    assert len(gate) == 12
    assert not [p for p in gate if p.strip().lower() in users]
