"""Population agents: SAC and behavioral cloning, ``P`` independent members per object."""

from offline_mbrl.agents.base import (
    ActionScaler,
    Agent,
    MixedBatchAgent,
    split_member_state,
    stack_member_states,
)
from offline_mbrl.agents.bc import BehavioralCloning
from offline_mbrl.agents.sac import SAC

__all__ = [
    "SAC",
    "ActionScaler",
    "Agent",
    "BehavioralCloning",
    "MixedBatchAgent",
    "split_member_state",
    "stack_member_states",
]
