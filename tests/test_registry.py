"""The mode registry: a mode added in one place reaches the CLI, training, loading and plots."""

import pytest
import torch
from tests.test_modes import TINY_AGENT, TINY_MODEL, dirs, hopper_dataset  # noqa: F401

from offline_mbrl import load_agent, plotting
from offline_mbrl.agents.bc import BehavioralCloning
from offline_mbrl.cli import train_main
from offline_mbrl.config import TrainerConfiguration
from offline_mbrl.modes import MODES, ModeSpec, get_mode, mode_names, pessimistic_modes


class SignCloning(BehavioralCloning):
    """A stand-in for a new algorithm: cloning that regresses the sign of the actions."""

    def update(self, batch, rng):
        batch = dict(batch, action=torch.sign(batch["action"]) * self.scaler.scale
                     + self.scaler.center)
        return super().update(batch, rng)


DUMMY = ModeSpec("sign-cloning", agent=f"{__name__}:SignCloning", online=False,
                 default_updates=1000, precisions=("float32",), summary="a test mode")


@pytest.fixture()
def dummy_mode(monkeypatch):
    monkeypatch.setitem(MODES, DUMMY.name, DUMMY)
    return DUMMY


def test_the_seed_modes_are_registered_with_their_properties():
    assert list(MODES)[:8] == ["sac", "mbpo", "offline-sac", "behavioral-cloning",
                               "aleatoric-penalty", "epistemic-penalty",
                               "aleatoric-partitioning", "epistemic-partitioning"]
    assert mode_names(online=True) == ("sac", "mbpo")
    assert pessimistic_modes()[:4] == tuple(list(MODES)[4:8])
    spec = get_mode("epistemic-partitioning")
    assert (spec.pessimism, spec.uncertainty, spec.pessimism_field) == (
        "partitioning", "epistemic", "ood_threshold")
    with pytest.raises(KeyError, match="unknown mode 'nope'"):
        get_mode("nope")


def test_a_pessimistic_mode_must_name_its_uncertainty_and_model():
    from offline_mbrl.modes import register

    with pytest.raises(ValueError, match="names its uncertainty"):
        register(ModeSpec("x", DUMMY.agent, online=False, model_based=True,
                          pessimism="penalty"))
    with pytest.raises(ValueError, match="needs an environment model"):
        register(ModeSpec("x", DUMMY.agent, online=False, pessimism="penalty",
                          uncertainty="epistemic"))
    assert "x" not in MODES


def test_a_registered_mode_trains_from_the_cli_loads_and_plots(dummy_mode, dirs, capsys):  # noqa: F811
    with pytest.raises(ValueError, match="unknown mode"):
        TrainerConfiguration(mode="not-registered")
    code = train_main(["--env_name", "hopper-random-v2", "--mode", dummy_mode.name,
                       "--epochs", "2", "--steps_per_epoch", "20", "--test_episodes", "1",
                       "--max_episode_length", "30", "--n_hidden_layers", "1",
                       "--n_hidden_units", "16", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    runs = plotting.load_runs(dirs / "experiments")
    assert [r.config["mode"] for r in runs] == [dummy_mode.name]
    assert len(runs[0].progress["Epoch"]) == 2
    groups = plotting.group_runs(runs)
    assert list(groups) == [f"hopper-random-v2-{dummy_mode.name}"]
    figure = plotting.plot_curves(groups, "AverageTestEpRet", "TotalUpdates")
    assert figure.axes[0].get_legend_handles_labels()[1] == [f"{name} (1 seeds)" for name in groups]
    agent = load_agent(runs[0].path)
    assert isinstance(agent.agent, SignCloning)


def test_the_default_budget_comes_from_the_registry(dummy_mode):
    config = TrainerConfiguration(mode=dummy_mode.name, steps_per_epoch=100)
    assert config.epochs == 10  # 1000 default updates / 100 per epoch
    assert TrainerConfiguration(mode="behavioral-cloning", steps_per_epoch=1000).epochs == 250


def test_unknown_agents_in_checkpoints_are_never_imported():
    from offline_mbrl.modes import agent_class_of

    with pytest.raises(KeyError, match="no registered mode"):
        agent_class_of("os:system")
    assert agent_class_of("bc") is BehavioralCloning  # checkpoints from before the registry
