"""How wrong an environment model is, and how well its uncertainty ranks its own errors.

The truth is the MuJoCo simulator itself: D4RL files (and the files ``ombrl datasets collect``
writes) carry ``infos/qpos`` and ``infos/qvel``, the exact simulator state of each row's
observation, so a held-out row's state can be set and the dataset's actions replayed.

* Held-out rows: the model's own validation split when its metadata records how it was
  drawn (``config.validation_fraction``, ``config.seed`` and the dataset hash), else a seeded
  random 10% of the transitions. Rows whose next observation belongs to another episode
  (D4RL v0/v1 files) are left out, as in training.
* Prediction: the mean of the elite members' means (no sampling noise), clipped as rollouts
  clip, so that the error measures the model, not the draw.
* Error: the Euclidean norm of ``(predicted - true next observation) / obs_std``, with
  ``obs_std`` the per-dimension standard deviation of the model's training observations
  (its normaliser): the scale the uncertainties of :mod:`offline_mbrl.models.uncertainty`
  are measured in. The reward error ``|predicted - true| / reward_std`` is reported beside it.
* One-step: up to ``samples`` held-out transitions, the dataset's next observation as truth
  (for MuJoCo data it is what the simulator gives, see the tests).
* Multi-step: from up to ``starts`` held-out rows, the model rolls ``h = 1..H`` steps with the
  dataset's next actions of the same episode while the simulator, set to the same start
  state, replays them. A rollout ends at the episode's end, at the simulator's termination
  or at the model's predicted one (the step that terminates is still scored).
* Uncertainty: ``aleatoric`` is reported as the largest predicted standard deviation (the
  square root of :func:`~offline_mbrl.models.uncertainty.aleatoric_uncertainty`, so that it
  has the error's units), ``epistemic`` is
  :func:`~offline_mbrl.models.uncertainty.epistemic_uncertainty`, both over the elites.
  Each is scored by its Spearman correlation with the error and by the AUROC of telling the
  errors above their 90th percentile from the others.
* Calibration: the predicted values are split into deciles; each decile's mean error is
  plotted against its mean predicted value, with the line ``y = x``. The aleatoric value is
  one dimension's standard deviation while the error sums all dimensions, so a calibrated
  model lies on or above that line (by at most ``sqrt(obs_dim)``).
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from offline_mbrl.data.d4rl import episode_segments
from offline_mbrl.data.dataset import OfflineDataset
from offline_mbrl.envs.registry import evaluation_env_id, make_env
from offline_mbrl.errors import UserError
from offline_mbrl.files import write_bytes_atomic, write_json_atomic
from offline_mbrl.models.ensemble import EnsembleOutput, EnvironmentModel
from offline_mbrl.models.training import split_indices, without_resets
from offline_mbrl.models.uncertainty import uncertainty

KINDS = ("aleatoric", "epistemic")
DEFAULT_HORIZON = 5
DEFAULT_SAMPLES = 10_000
DEFAULT_STARTS = 1_000
RANDOM_HOLDOUT_FRACTION = 0.1
HIGH_ERROR_QUANTILE = 0.9
CALIBRATION_BINS = 10
PNG_FILE = "diagnose.png"
JSON_FILE = "diagnose.json"
ERROR_DEFINITION = ("Euclidean norm of (predicted - true next observation) / obs_std, obs_std "
                    "the per-dimension std of the model's training observations; reward error "
                    "|predicted - true reward| / reward_std")
UNCERTAINTY_DEFINITIONS = {
    "aleatoric": "largest predicted standard deviation over elite members and dimensions "
                 "(square root of the aleatoric uncertainty)",
    "epistemic": "largest distance between two elite members' predicted means",
}


class MultiStepUnavailable(Exception):
    """The dataset or its environment does not allow replaying rows in the simulator."""


# ------------------------------------------------------------------- ranking statistics
def average_ranks(values: np.ndarray) -> np.ndarray:
    """``[N]`` ranks ``1..N`` of ``values`` ``[N]``; tied values share their mean rank."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    # A run of ties occupying sorted positions first..first+count-1 gets their mean, + 1.
    tied = np.repeat(first + (counts - 1) / 2.0 + 1.0, counts)
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = tied
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation of ``x`` and ``y`` ``[N]`` (Pearson's of average ranks).

    NaN when ``N < 2`` or either input is constant.
    """
    if np.size(x) < 2:
        return math.nan
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float(rx @ ry) / denominator if denominator > 0 else math.nan


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` ``[N]`` for bool ``labels`` ``[N]``.

    The Mann–Whitney form: the probability that a positive scores above a negative, ties
    counting one half. NaN without both positives and negatives.
    """
    labels = np.asarray(labels, dtype=bool)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    rank_sum = float(average_ranks(scores)[labels].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def high_error_auroc(scores: np.ndarray, error: np.ndarray,
                     quantile: float = HIGH_ERROR_QUANTILE) -> float:
    """:func:`auroc` of ``scores`` ``[N]`` for ``error > its quantile`` (``[N]``)."""
    if np.size(error) == 0:
        return math.nan
    return auroc(scores, error > np.quantile(error, quantile))


def calibration_bins(predicted: np.ndarray, error: np.ndarray,
                     bins: int = CALIBRATION_BINS) -> dict[str, list[float]]:
    """Mean predicted value, mean error and count per bin of equal count along ``predicted``.

    Args:
        predicted, error: ``[N]``.
        bins: number of bins (fewer when ``N < bins``).
    """
    order = np.argsort(predicted, kind="mergesort")
    groups = [g for g in np.array_split(order, min(bins, order.size)) if g.size]
    return {"predicted": [float(np.mean(predicted[g])) for g in groups],
            "error": [float(np.mean(error[g])) for g in groups],
            "count": [int(g.size) for g in groups]}


def ranking_summary(spread: Mapping[str, np.ndarray], error: np.ndarray,
                    with_calibration: bool = True) -> dict[str, dict[str, Any]]:
    """Per uncertainty kind: Spearman correlation and high-error AUROC (and calibration bins)
    of ``spread[kind]`` ``[N]`` against ``error`` ``[N]``."""
    summary: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        values = spread[kind]
        entry: dict[str, Any] = {"spearman": spearman(values, error),
                                 "auroc_high_error": high_error_auroc(values, error)}
        if with_calibration:
            entry["calibration"] = calibration_bins(values, error)
        summary[kind] = entry
    return summary


def error_stats(error: np.ndarray) -> dict[str, float]:
    """Mean, median, 90th percentile and maximum of ``error`` ``[N]`` (NaN when empty)."""
    if np.size(error) == 0:
        return {"mean": math.nan, "median": math.nan, "p90": math.nan, "max": math.nan}
    return {"mean": float(np.mean(error)), "median": float(np.median(error)),
            "p90": float(np.quantile(error, HIGH_ERROR_QUANTILE)), "max": float(np.max(error))}


# ------------------------------------------------------------------------ held-out rows
def model_validation_rows(dataset: OfflineDataset,
                          metadata: Mapping[str, Any]) -> np.ndarray | None:
    """The model's validation rows ``[M]`` redrawn from its metadata, or None if it does not
    say how they were drawn or was trained on other data."""
    config = metadata.get("config")
    validation = metadata.get("validation")
    saved_hash = metadata.get("dataset_hash") or (
        validation.get("dataset_hash") if isinstance(validation, Mapping) else None)
    if not isinstance(config, Mapping) or saved_hash != dataset.content_hash():
        return None
    fraction, seed = config.get("validation_fraction"), config.get("seed")
    if fraction is None or seed is None:
        return None
    _, val = split_indices(len(dataset), float(fraction), int(seed), str(saved_hash))
    return val.numpy()


def held_out_rows(dataset: OfflineDataset, metadata: Mapping[str, Any],
                  seed: int) -> tuple[np.ndarray, str]:
    """``(rows [M] sorted, how they were chosen)``: the model's validation split, else a
    random :data:`RANDOM_HOLDOUT_FRACTION` of the rows drawn with ``seed``."""
    rows = model_validation_rows(dataset, metadata)
    source = "model validation split"
    if rows is None:
        n = len(dataset)
        count = max(1, round(n * RANDOM_HOLDOUT_FRACTION))
        rows = np.random.default_rng(seed).permutation(n)[:count]
        source = f"random {RANDOM_HOLDOUT_FRACTION:.0%} of the transitions (seed {seed})"
    kept = without_resets(torch.as_tensor(rows, dtype=torch.long), dataset).numpy()
    return np.sort(kept), source


def subsample(rows: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``count`` of ``rows`` ``[M]``, drawn without replacement, sorted."""
    if rows.size <= count:
        return rows
    return np.sort(rng.choice(rows, size=count, replace=False))


# ------------------------------------------------------------------------- predictions
@dataclass
class Prediction:
    """The model's mean prediction and its uncertainty for a batch of ``B`` inputs.

    Attributes:
        next_obs: ``[B, obs_dim]`` raw units.
        reward: ``[B]`` raw units.
        spread: per uncertainty kind, ``[B]`` in standardised observation units.
    """

    next_obs: torch.Tensor
    reward: torch.Tensor
    spread: dict[str, torch.Tensor]


def predicted_spread(kind: str, outputs: EnsembleOutput, model: EnvironmentModel
                     ) -> torch.Tensor:
    """``[B]`` uncertainty ``kind`` over the elites, as a standard deviation or distance."""
    value = uncertainty(kind, outputs, model.normalizer, model.elites)  # type: ignore[arg-type]
    # The aleatoric measure is a variance; its root has the units of the error.
    return value.clamp_min(0).sqrt() if kind == "aleatoric" else value


def mean_prediction(model: EnvironmentModel, outputs: EnsembleOutput, obs: torch.Tensor
                    ) -> Prediction:
    """The elites' mean prediction for ``obs`` ``[B, obs_dim]`` from ``outputs`` ``[E, B, ...]``.

    The averaged outputs go through the model's own :meth:`~EnvironmentModel.sample_next`
    with zero noise, so they are clipped exactly as rollouts clip.
    """
    elites = model.elites
    averaged = EnsembleOutput(*(v.index_select(0, elites).mean(0, keepdim=True) for v in outputs))
    batch = obs.shape[0]
    member = torch.zeros(batch, dtype=torch.long, device=obs.device)
    noise = torch.zeros(batch, model.obs_dim + 1, device=obs.device)
    next_obs, reward = model.sample_next(averaged, obs, member, noise)
    spread = {kind: predicted_spread(kind, outputs, model) for kind in KINDS}
    return Prediction(next_obs, reward, spread)


def observation_error(model: EnvironmentModel, predicted: torch.Tensor, true: torch.Tensor
                      ) -> torch.Tensor:
    """``[...]`` norm of ``(predicted - true) / obs_std`` over the last dimension."""
    return ((predicted - true) / model.normalizer.obs_std).norm(dim=-1)


def reward_error(model: EnvironmentModel, predicted: torch.Tensor, true: torch.Tensor
                 ) -> torch.Tensor:
    """``[...]`` ``|predicted - true| / reward_std``."""
    return (predicted - true).abs() / model.normalizer.reward_std


def _tensor(array: np.ndarray, model: EnvironmentModel) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array, dtype=np.float32), device=model.elites.device)


@torch.no_grad()
def one_step(model: EnvironmentModel, dataset: OfflineDataset, rows: np.ndarray
             ) -> dict[str, Any]:
    """One-step error of ``model`` on ``rows`` ``[M]`` and how each uncertainty ranks it."""
    obs = _tensor(dataset.observations[rows], model)
    outputs = model.predict_in_batches(obs, _tensor(dataset.actions[rows], model))
    prediction = mean_prediction(model, outputs, obs)
    error = observation_error(model, prediction.next_obs,
                              _tensor(dataset.next_observations[rows], model)).cpu().numpy()
    rewards = reward_error(model, prediction.reward, _tensor(dataset.rewards[rows], model))
    spread = {k: v.cpu().numpy() for k, v in prediction.spread.items()}
    return {"samples": int(rows.size), "error": error_stats(error),
            "reward_error": error_stats(rewards.cpu().numpy()),
            **ranking_summary(spread, error)}


# ---------------------------------------------------------------------------- simulator
def simulator_id(name: str, dataset: OfflineDataset) -> str:
    """The Gymnasium id the dataset was recorded on (its ``env_id``, else ``name``'s)."""
    recorded = dataset.metadata.get("env_id")
    try:
        return evaluation_env_id(name, recorded)
    except UserError:
        if isinstance(recorded, str) and recorded in gym.registry:
            return recorded
        raise MultiStepUnavailable(f"no simulator is known for {name}") from None


def open_simulator(name: str, dataset: OfflineDataset) -> tuple[gym.Env, str]:
    """``(env, gym_id)``: the reset simulator of ``dataset``, checked to take its states.

    Raises:
        MultiStepUnavailable: no ``infos/qpos``/``qvel``, no MuJoCo simulator, or state
            sizes that differ from the simulator's.
    """
    if "qpos" not in dataset.infos or "qvel" not in dataset.infos:
        raise MultiStepUnavailable(f"dataset {dataset.name or name} has no infos/qpos and "
                                   "infos/qvel")
    gym_id = simulator_id(name, dataset)
    env = make_env(gym_id)
    core: Any = env.unwrapped
    data = getattr(core, "data", None)
    if data is None or not hasattr(core, "set_state"):
        env.close()
        raise MultiStepUnavailable(f"{gym_id} is not a MuJoCo environment")
    shapes = (dataset.infos["qpos"].shape[1:], dataset.infos["qvel"].shape[1:])
    if shapes != (data.qpos.shape, data.qvel.shape):
        env.close()
        raise MultiStepUnavailable(f"infos/qpos and infos/qvel have shapes {shapes} but "
                                   f"{gym_id} has {data.qpos.shape} and {data.qvel.shape}")
    env.reset(seed=0)
    return env, gym_id


def replay(env: gym.Env, qpos: np.ndarray, qvel: np.ndarray, actions: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """Set the simulator to ``(qpos, qvel)`` and apply ``actions`` ``[h, act_dim]``.

    Returns:
        ``observations`` ``[h', obs_dim]`` and ``rewards`` ``[h']`` after each step, with
        ``h' <= h``: the replay stops after a step that terminates.
    """
    core: Any = env.unwrapped
    core.set_state(np.asarray(qpos, dtype=np.float64), np.asarray(qvel, dtype=np.float64))
    observations, rewards = [], []
    for action in actions:
        obs, reward, terminated, _, _ = core.step(np.asarray(action, dtype=np.float64))
        observations.append(np.asarray(obs, dtype=np.float32))
        rewards.append(float(reward))
        if terminated:
            break
    obs_dim = env.observation_space.shape[0]  # type: ignore[index]
    return (np.stack(observations) if observations else np.zeros((0, obs_dim), np.float32),
            np.asarray(rewards, dtype=np.float32))


def episode_stops(dataset: OfflineDataset) -> np.ndarray:
    """``[N]`` one past the last row of each row's episode.

    Episodes also end where the rows do not chain (``next_observations[i] !=
    observations[i + 1]``): the actions after such a break belong to another state.
    """
    stops = np.empty(len(dataset), dtype=np.int64)
    for start, stop, _ in episode_segments(dataset, split_on_discontinuity=True):
        stops[start:stop] = stop
    return stops


@dataclass
class Replays:
    """What the simulator did from ``S`` start rows, padded to ``H`` steps.

    Attributes:
        actions: ``[S, H, act_dim]`` the dataset's actions from each start (padding: the
            last row's).
        observations: ``[S, H, obs_dim]`` simulator observations (NaN past ``steps``).
        rewards: ``[S, H]`` simulator rewards (NaN past ``steps``).
        steps: ``[S]`` steps replayed.
        first_step_mismatch: largest ``|simulator - dataset|`` over the first step's next
            observations, a check that the states were set right.
    """

    actions: np.ndarray
    observations: np.ndarray
    rewards: np.ndarray
    steps: np.ndarray
    first_step_mismatch: float


def replay_starts(env: gym.Env, dataset: OfflineDataset, starts: np.ndarray, horizon: int
                  ) -> Replays:
    """Replay up to ``horizon`` of the dataset's actions from each row of ``starts`` ``[S]``."""
    index = np.minimum(starts[:, None] + np.arange(horizon), len(dataset) - 1)
    available = np.minimum(episode_stops(dataset)[starts] - starts, horizon)
    actions = dataset.actions[index]
    observations = np.full((starts.size, horizon, dataset.obs_dim), np.nan, np.float32)
    rewards = np.full((starts.size, horizon), np.nan, np.float32)
    steps = np.zeros(starts.size, dtype=np.int64)
    for s, row in enumerate(starts):
        obs, rew = replay(env, dataset.infos["qpos"][row], dataset.infos["qvel"][row],
                          actions[s, : available[s]])
        steps[s] = obs.shape[0]
        observations[s, : steps[s]], rewards[s, : steps[s]] = obs, rew
    first = np.abs(observations[:, 0] - dataset.next_observations[starts])
    mismatch = float(np.max(first)) if starts.size else math.nan
    return Replays(actions, observations, rewards, steps, mismatch)


# --------------------------------------------------------------------------- multi-step
@dataclass
class ModelRollout:
    """The model's open-loop rollouts, ``[S, H]`` per step.

    Attributes:
        observations: ``[S, H, obs_dim]`` predicted observations.
        rewards: ``[S, H]`` predicted rewards.
        spread: per uncertainty kind ``[S, H]``, of the prediction that made each step.
        alive: ``[S, H]`` bool, steps that both the simulator and the model reached.
    """

    observations: torch.Tensor
    rewards: torch.Tensor
    spread: dict[str, torch.Tensor]
    alive: torch.Tensor


@torch.no_grad()
def model_rollout(model: EnvironmentModel, start_obs: torch.Tensor, actions: torch.Tensor,
                  steps: torch.Tensor) -> ModelRollout:
    """Roll ``model`` from ``start_obs`` ``[S, obs_dim]`` with ``actions`` ``[S, H, act_dim]``.

    A rollout stays alive for ``steps`` ``[S]`` steps and until the model predicts
    termination (the terminating step is kept).
    """
    n, horizon = actions.shape[:2]
    predicted, rewards, alive = [], [], []
    spread: dict[str, list[torch.Tensor]] = {kind: [] for kind in KINDS}
    obs = start_obs
    running = torch.ones(n, dtype=torch.bool, device=obs.device)
    for k in range(horizon):
        prediction = mean_prediction(model, model(obs, actions[:, k]), obs)
        alive.append(running & (k < steps))
        predicted.append(prediction.next_obs)
        rewards.append(prediction.reward)
        for kind in KINDS:
            spread[kind].append(prediction.spread[kind])
        running = running & ~model.terminated(obs, actions[:, k], prediction.next_obs)
        obs = prediction.next_obs
    return ModelRollout(torch.stack(predicted, 1), torch.stack(rewards, 1),
                        {kind: torch.stack(v, 1) for kind, v in spread.items()},
                        torch.stack(alive, 1))


def horizon_summary(error: np.ndarray, rewards: np.ndarray, spread: Mapping[str, np.ndarray],
                    alive: np.ndarray) -> list[dict[str, Any]]:
    """Per step ``h = 1..H``: count, error statistics and ranking of the alive rollouts.

    All arguments are ``[S, H]`` (``alive`` bool).
    """
    rows = []
    for k in range(alive.shape[1]):
        mask = alive[:, k]
        ranks = ranking_summary({kind: v[mask, k] for kind, v in spread.items()},
                                error[mask, k], with_calibration=False)
        rows.append({"h": k + 1, "n": int(mask.sum()), "error": error_stats(error[mask, k]),
                     "reward_error": error_stats(rewards[mask, k]), **ranks})
    return rows


def multi_step(model: EnvironmentModel, env: gym.Env, dataset: OfflineDataset,
               starts: np.ndarray, horizon: int) -> dict[str, Any]:
    """Multi-step error from ``starts`` ``[S]`` up to ``horizon`` steps, per step and pooled."""
    replays = replay_starts(env, dataset, starts, horizon)
    rollout = model_rollout(model, _tensor(dataset.observations[starts], model),
                            _tensor(replays.actions, model),
                            torch.as_tensor(replays.steps, device=model.elites.device))
    true_obs = _tensor(np.nan_to_num(replays.observations), model)
    error = observation_error(model, rollout.observations, true_obs).cpu().numpy()
    rewards = reward_error(model, rollout.rewards,
                           _tensor(np.nan_to_num(replays.rewards), model)).cpu().numpy()
    spread = {kind: v.cpu().numpy() for kind, v in rollout.spread.items()}
    alive = rollout.alive.cpu().numpy()
    return {"skipped": False, "starts": int(starts.size), "steps": int(alive.sum()),
            "first_step_max_abs_diff_from_dataset": replays.first_step_mismatch,
            "per_horizon": horizon_summary(error, rewards, spread, alive),
            "pooled": ranking_summary({k: v[alive] for k, v in spread.items()}, error[alive])}


# ------------------------------------------------------------------------------- driver
def file_hash(path: Path) -> str:
    """The first 16 hex digits of the SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def check_counts(horizon: int, samples: int, starts: int) -> None:
    """Raise :class:`UserError` unless the horizon and both sample counts are positive."""
    for flag, value in (("--horizon", horizon), ("--samples", samples), ("--starts", starts)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}: pass a positive count, "
                            f"e.g. {flag} 5")


def _multi_step_part(model: EnvironmentModel, dataset: OfflineDataset, name: str,
                     starts: np.ndarray, horizon: int) -> dict[str, Any]:
    """:func:`multi_step` in the dataset's simulator, or why it was skipped."""
    try:
        env, gym_id = open_simulator(name, dataset)
    except MultiStepUnavailable as reason:
        return {"skipped": True, "reason": str(reason)}
    try:
        return {"simulator": gym_id, **multi_step(model, env, dataset, starts, horizon)}
    finally:
        env.close()


def diagnose(model: EnvironmentModel, dataset: OfflineDataset, *, name: str,
             model_path: Path, model_metadata: Mapping[str, Any],
             dataset_source: str | None = None, horizon: int = DEFAULT_HORIZON,
             samples: int = DEFAULT_SAMPLES, starts: int = DEFAULT_STARTS,
             seed: int = 0) -> dict[str, Any]:
    """The whole diagnosis of ``model`` on ``dataset`` as a JSON-ready summary.

    Args:
        model: the trained environment model.
        dataset: its dataset.
        name: the dataset or environment name the user gave (picks the simulator when the
            dataset does not record its ``env_id``).
        model_path: the model's file (recorded with its hash).
        model_metadata: the model file's metadata (for its validation split).
        dataset_source: where the dataset was read from, for the record.
        horizon: multi-step horizon ``H``.
        samples: held-out transitions for the one-step error, at most.
        starts: held-out start rows for the multi-step error, at most.
        seed: seed of the random split (when the model records none) and the subsamples.
    """
    check_counts(horizon, samples, starts)
    rows, source = held_out_rows(dataset, model_metadata, seed)
    rng = np.random.default_rng(seed)
    one_step_rows, start_rows = subsample(rows, samples, rng), subsample(rows, starts, rng)
    return {
        "dataset": name, "dataset_source": dataset_source, "dataset_hash": dataset.content_hash(),
        "n_transitions": len(dataset), "model": str(model_path),
        "model_file_sha256": file_hash(model_path),
        "model_dataset_hash": model_metadata.get("dataset_hash"),
        "elites": [int(e) for e in model.elites.tolist()], "horizon": horizon, "seed": seed,
        "error_definition": ERROR_DEFINITION, "uncertainty_definitions": UNCERTAINTY_DEFINITIONS,
        "high_error_quantile": HIGH_ERROR_QUANTILE,
        "held_out": {"source": source, "rows": int(rows.size)},
        "one_step": one_step(model, dataset, one_step_rows),
        "multi_step": _multi_step_part(model, dataset, name, start_rows, horizon),
    }


# ------------------------------------------------------------------------------ outputs
def _calibration_panel(ax: Axes, summary: Mapping[str, Any], kind: str) -> None:
    """Mean error against mean predicted value per decile, one-step and pooled multi-step."""
    series = [("one-step (held-out)", summary["one_step"][kind]["calibration"], "o-")]
    if not summary["multi_step"]["skipped"]:
        series.append((f"multi-step (h ≤ {summary['horizon']})",
                       summary["multi_step"]["pooled"][kind]["calibration"], "s--"))
    values = []
    for label, bins, style in series:
        ax.plot(bins["predicted"], bins["error"], style, label=label)
        values += bins["predicted"] + bins["error"]
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    if positive:
        low, high = min(positive), max(positive)
        ax.plot([low, high], [low, high], ":", color="gray", label="y = x")
        # Log axes only where the values span a decade: on a narrower range they show
        # no major tick at all.
        if len(positive) == len(values) and high > 10 * low:
            ax.set_xscale("log")
            ax.set_yscale("log")
            # Minor-tick labels of a log axis spanning about one decade collide.
            ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(f"predicted {kind} ({'std' if kind == 'aleatoric' else 'disagreement'})")
    ax.set_ylabel("observed error (mean per decile)")
    ax.set_title(f"{kind} calibration")
    ax.legend(fontsize="small")


def _horizon_panel(ax: Axes, summary: Mapping[str, Any]) -> None:
    """Mean, median and 90th percentile of the multi-step error against the horizon."""
    part = summary["multi_step"]
    ax.set_title("error against horizon")
    ax.set_xlabel("steps h")
    ax.set_ylabel("observed error")
    if part["skipped"]:
        ax.text(0.5, 0.5, f"multi-step skipped:\n{part['reason']}", ha="center", va="center",
                wrap=True, transform=ax.transAxes)
        return
    rows = [r for r in part["per_horizon"] if r["n"] > 0]
    steps = [r["h"] for r in rows]
    for stat, style in (("mean", "o-"), ("median", "s--"), ("p90", "^:")):
        ax.plot(steps, [r["error"][stat] for r in rows], style, label=stat)
    ax.set_xticks(steps)
    ax.legend(fontsize="small")


def diagnosis_figure(summary: Mapping[str, Any]) -> Figure:
    """One calibration panel per uncertainty kind and a panel of error against horizon."""
    fig = Figure(figsize=(15, 4.5), layout="constrained")
    axes = fig.subplots(1, len(KINDS) + 1)
    for ax, kind in zip(axes, KINDS, strict=False):
        _calibration_panel(ax, summary, kind)
    _horizon_panel(axes[-1], summary)
    fig.suptitle(f"{summary['dataset']}: model {Path(summary['model']).name}")
    return fig


def json_ready(value: Any) -> Any:
    """``value`` with non-finite floats replaced by None (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


def write_diagnosis(summary: Mapping[str, Any], out: Path) -> tuple[Path, Path]:
    """Write ``<out>/diagnose.png`` and ``<out>/diagnose.json``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    diagnosis_figure(summary).savefig(buffer, format="png", dpi=120)
    png = write_bytes_atomic(out / PNG_FILE, buffer.getvalue())
    return png, write_json_atomic(out / JSON_FILE, json_ready(summary))
