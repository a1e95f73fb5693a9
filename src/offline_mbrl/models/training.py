"""Training an :class:`~offline_mbrl.models.ensemble.EnvironmentModel` on an offline dataset.

The seed's protocol: 80 % of the transitions train, 20 % validate; all members see the same
shuffled batches of 256 from different initialisations; Adam with learning rate 1e-3; the
validation error is the mean-squared error of the predicted means only; training stops when
the validation error has not improved for ``training_patience`` epochs (10 for medium-expert,
100 for medium-replay, 30 for other datasets).

Early stopping is tracked per member: each member keeps the weights of its own best
validation epoch, and training stops once *no* member has improved for ``patience``
consecutive epochs. At the end every member is restored to its best weights, and the
``n_elites`` members with the lowest validation error become the model's elites.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field, ValidationError, model_validator
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.utils.tensorboard import SummaryWriter

from offline_mbrl.data.dataset import OfflineDataset
from offline_mbrl.errors import NonFiniteError, UserError, validation_message
from offline_mbrl.fields import Frozen, PositiveInt
from offline_mbrl.models.ensemble import EnsembleOutput, EnvironmentModel
from offline_mbrl.runtime import keep_freed_memory

# Validation chunks: tensors of [E, 2048, 200] stay in cache and well below glibc's 32 MB
# mmap threshold (bigger ones are page-faulted in afresh on every allocation).
_VALIDATION_CHUNK = 2048


class EnvironmentModelConfiguration(Frozen):
    """Architecture and training of the environment model (seed defaults)."""

    type: Literal["probabilistic", "deterministic"] = "probabilistic"
    """probabilistic: Gaussian outputs trained with the negative log-likelihood;
    deterministic: means only, trained with the mean-squared error."""
    n_networks: PositiveInt = 7
    """Ensemble members, trained side by side on the same batches."""
    n_hidden_layers: Annotated[int, Field(ge=0)] = 4
    """Hidden layers of the dynamics and of the reward networks."""
    n_hidden_units: PositiveInt = 200
    """ReLU units per hidden layer of the dynamics networks."""
    reward_n_hidden_units: PositiveInt = 64
    """ReLU units per hidden layer of the reward networks."""
    lr: Annotated[float, Field(gt=0)] = 1e-3
    """Adam learning rate."""
    batch_size: PositiveInt = 256
    """Transitions per gradient step (the same batch for every member)."""
    training_patience: PositiveInt | None = None
    """Stop after this many epochs without improvement of the validation error; None: the
    seed's default for the dataset (10 medium-expert, 100 medium-replay, 30 otherwise)."""
    max_number_of_training_epochs: PositiveInt | None = None
    """Upper limit on training epochs (None: until early stopping)."""
    max_number_of_training_batches: PositiveInt | None = None
    """Upper limit on gradient steps over all epochs (None: no limit)."""
    validation_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    """Fraction of the transitions held out for validation."""
    n_elites: PositiveInt | None = None
    """Members with the lowest validation error used for sampling (None: all)."""
    seed: Annotated[int, Field(ge=0)] = 0
    """Seed of the initial weights, the train/validation split and the batch order."""
    device: str = "cpu"
    """Torch device: cpu, cuda or cuda:N."""
    precision: Literal["float32", "bfloat16"] = "float32"
    """Matrix products during training: float32, or bfloat16 under autocast (faster on CPUs
    with AVX512-BF16 and on GPUs, much slower on CPUs without it); weights, loss and
    validation stay float32."""

    @model_validator(mode="after")
    def _elites_within_ensemble(self) -> EnvironmentModelConfiguration:
        if self.n_elites is not None and self.n_elites > self.n_networks:
            raise ValueError(f"n_elites ({self.n_elites}) must not exceed "
                             f"n_networks ({self.n_networks})")
        return self


def make_model_config(**values: Any) -> EnvironmentModelConfiguration:
    """Build a configuration; invalid values become a one-line :class:`UserError`."""
    try:
        return EnvironmentModelConfiguration(**values)
    except ValidationError as error:
        raise UserError("invalid environment model configuration: "
                        f"{validation_message(error)}") from None


def default_patience(name: str) -> int:
    """The seed's patience for a dataset name: 10 medium-expert, 100 medium-replay, else 30."""
    if "medium-expert" in name or "medium_expert" in name:
        return 10
    if "medium-replay" in name or "medium_replay" in name:
        return 100
    return 30


def resolve_device(device: str) -> torch.device:
    """``torch.device(device)``, or a :class:`UserError` if it is malformed or unavailable."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"invalid device '{device}': use cpu, cuda or cuda:N") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device '{device}' requested but CUDA is not available: "
                            "use --device cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise UserError(f"device '{device}' does not exist ({torch.cuda.device_count()} "
                            "CUDA devices): use cuda:0")
    elif resolved.type != "cpu":
        raise UserError(f"unsupported device '{device}': use cpu, cuda or cuda:N")
    return resolved


def split_indices(
    n: int, validation_fraction: float, seed: int, dataset_hash: str = ""
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, validation)`` row indices, a fixed function of the dataset and the seed.

    The dataset's content hash enters the generator's seed so that two datasets of equal
    size do not share a split pattern.
    """
    if n < 2:
        raise UserError(f"the dataset has {n} transition(s): at least 2 are needed to train "
                        "and validate an environment model")
    n_val = min(n - 1, max(1, round(n * validation_fraction)))
    salt = int(dataset_hash[:12], 16) if dataset_hash else 0
    generator = torch.Generator().manual_seed((salt * 1_000_003 + seed) % (1 << 63))
    perm = torch.randperm(n, generator=generator)
    return perm[n_val:], perm[:n_val]


def without_resets(indices: torch.Tensor, dataset: OfflineDataset) -> torch.Tensor:
    """``indices`` less the rows whose next observation belongs to another episode."""
    resets = dataset.metadata.get("reset_next_observation_rows")
    if resets is None:
        return indices
    rows = np.atleast_1d(np.asarray(resets, dtype=np.int64))
    if rows.size == 0:
        return indices
    drop = torch.as_tensor(rows)
    return indices[~torch.isin(indices, drop)]


def _check_finite(dataset: OfflineDataset) -> None:
    for key in ("observations", "actions", "rewards", "next_observations"):
        array = getattr(dataset, key)
        if not np.isfinite(array).all():
            raise UserError(f"dataset {dataset.name or '<unnamed>'}: '{key}' has non-finite "
                            "values: clean or re-create the dataset")


@torch.no_grad()
def validation_mse(
    model: EnvironmentModel, inputs: torch.Tensor, delta: torch.Tensor, reward: torch.Tensor
) -> torch.Tensor:
    """``[E]`` per-member MSE of the predicted means on normalised targets.

    The mean is over the ``obs_dim + 1`` standardised outputs (delta and reward), so every
    output dimension weighs the same whatever its raw scale.
    """
    total = torch.zeros(model.n_networks, device=inputs.device, dtype=torch.float64)
    for x, d, r in zip(inputs.split(_VALIDATION_CHUNK), delta.split(_VALIDATION_CHUNK),
                       reward.split(_VALIDATION_CHUNK), strict=True):
        out = model.forward_normalized(x)
        err = (out.delta_mean - d).square().sum(dim=(1, 2)) + (out.reward_mean - r).square().sum(1)
        total += err.double()
    return (total / (inputs.shape[0] * (model.obs_dim + 1))).float()


def _make_optimizer(params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    # The fused kernel updates all parameters in one pass (about 10 % of a CPU step).
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # pragma: no cover - old torch / device
        return torch.optim.Adam(params, lr=lr, foreach=True)


class _Progress:
    """A rich progress bar that can be switched off (no-ops then)."""

    def __init__(self, enabled: bool, batches_per_epoch: int) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.task: Any = None
        if enabled:
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                MofNCompleteColumn(), TimeElapsedColumn(), transient=True)
            self.task = self.bar.add_task("model epoch 1", total=batches_per_epoch)

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def update(self, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(self.task, **kwargs)


def train_environment_model(
    dataset: OfflineDataset,
    config: EnvironmentModelConfiguration | None = None,
    env_name: str | None = None,
    log_dir: str | Path | None = None,
    progress: bool = True,
    initial: EnvironmentModel | None = None,
) -> tuple[EnvironmentModel, dict[str, Any]]:
    """Train an ensemble on ``dataset`` with early stopping (see the module docstring).

    Args:
        dataset: the transitions.
        config: hyperparameters (default :class:`EnvironmentModelConfiguration`).
        env_name: D4RL name or Gymnasium id; stored in the model for its termination rule
            and used (before ``dataset.name``) to pick the default patience.
        log_dir: write TensorBoard scalars here when given.
        progress: show a rich progress bar.
        initial: a model of the same architecture to continue from (warm start): its
            weights and learned log-variance bounds are the starting point, the normaliser
            is refitted to ``dataset``.

    Rows whose ``next_observations`` were derived across an episode boundary (D4RL v0/v1
    files; ``metadata["reset_next_observation_rows"]``) are left out: they would teach the
    model a jump to the next episode's start.

    Returns:
        The trained model (best weights per member, elites set, in eval mode) and metrics:
        ``val_mse`` (mean over members), ``val_mse_per_member``, ``val_mse_elites``,
        ``val_mse_mean_predictor`` (error of always predicting the training mean),
        ``best_epoch_per_member``, ``elites``, ``epochs``, ``batches``, ``patience``,
        ``stopped_early``, ``train_loss`` (last epoch), ``epoch_time_s``, ``time_s``,
        ``n_train``, ``n_val``, ``dataset_hash``.

    Raises:
        UserError: unusable dataset or device; :class:`NonFiniteError` if the loss diverges.
    """
    config = config or EnvironmentModelConfiguration()
    device = _training_device(config.device)
    _check_finite(dataset)
    start = time.perf_counter()
    patience = config.training_patience or default_patience(env_name or dataset.name or "")
    dataset_hash = dataset.content_hash()
    train_idx, val_idx = split_indices(len(dataset), config.validation_fraction, config.seed,
                                       dataset_hash)
    model = _build_model(dataset, config, env_name, initial, device)
    rows = _normalised_rows(model, dataset, train_idx, val_idx, device)
    history, best = _fit(model, rows, config, patience, device, log_dir, progress)
    elites = _finalise(model, best, config.n_elites)
    return model, _metrics(model, rows, history, best, elites, patience=patience,
                           dataset_hash=dataset_hash, start=start)


def _training_device(device: str) -> torch.device:
    """:func:`resolve_device`; on the CPU, also applies :func:`keep_freed_memory`."""
    resolved = resolve_device(device)
    if resolved.type == "cpu":
        keep_freed_memory()
    return resolved


def _build_model(
    dataset: OfflineDataset,
    config: EnvironmentModelConfiguration,
    env_name: str | None,
    initial: EnvironmentModel | None,
    device: torch.device,
) -> EnvironmentModel:
    """A fresh ensemble for ``dataset``'s dimensions, or one warm-started from ``initial``."""
    model = EnvironmentModel(
        dataset.obs_dim, dataset.act_dim, type=config.type, n_networks=config.n_networks,
        n_hidden_layers=config.n_hidden_layers, n_hidden_units=config.n_hidden_units,
        reward_n_hidden_units=config.reward_n_hidden_units, env_name=env_name, seed=config.seed,
    ).to(device)
    if initial is not None:
        state = initial.state_dict()
        state["elites"] = model.elites  # chosen again after training
        model.load_state_dict(state)
    return model


@dataclass
class _Rows:
    """The normalised training and validation rows, on the training device.

    ``*_x`` are inputs ``[n, obs_dim + act_dim]``, ``*_d`` delta targets ``[n, obs_dim]`` and
    ``*_r`` reward targets ``[n]``, with ``n`` the number of training or validation rows.
    """

    train_x: torch.Tensor
    train_d: torch.Tensor
    train_r: torch.Tensor
    val_x: torch.Tensor
    val_d: torch.Tensor
    val_r: torch.Tensor

    @property
    def n_train(self) -> int:
        return int(self.train_x.shape[0])

    @property
    def n_val(self) -> int:
        return int(self.val_x.shape[0])

    def mean_predictor_mse(self, obs_dim: int) -> float:
        """Validation MSE of always predicting the training mean, i.e. 0 in normalised units."""
        return float((self.val_d.square().sum() + self.val_r.square().sum())
                     / (self.n_val * (obs_dim + 1)))


def _normalised_rows(
    model: EnvironmentModel,
    dataset: OfflineDataset,
    train_idx: torch.Tensor,
    val_idx: torch.Tensor,
    device: torch.device,
) -> _Rows:
    """Fit ``model``'s normaliser and standardise the rows of both splits.

    ``train_idx`` and ``val_idx`` are ``[n]`` row indices of ``dataset``; rows whose next
    observation belongs to another episode are dropped from both.
    """

    def column(array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array, dtype=np.float32), device=device)

    obs, action = column(dataset.observations), column(dataset.actions)
    next_obs, reward = column(dataset.next_observations), column(dataset.rewards)
    tr, va = (without_resets(idx, dataset).to(device) for idx in (train_idx, val_idx))
    norm = model.normalizer
    # Statistics from the training split only; the clipping range from all data.
    norm.fit(obs[tr], action[tr], next_obs[tr], reward[tr],
             range_obs=torch.cat([obs, next_obs]), range_reward=reward)
    # Normalise once up front so that a batch is a single gather; the raw columns are
    # freed when this returns.
    inputs = norm.inputs(obs, action)
    delta_t, reward_t = norm.targets(obs, next_obs, reward)
    return _Rows(inputs[tr], delta_t[tr], reward_t[tr], inputs[va], delta_t[va], reward_t[va])


@dataclass
class _BestWeights:
    """Per-member early stopping: each member's best validation error, epoch and weights.

    ``val`` is ``[E]`` float32 on the CPU, ``epoch`` ``[E]`` int64, and ``state`` maps every
    parameter name to its ``[E, ...]`` values, each member's taken at its best epoch.
    """

    val: torch.Tensor
    epoch: torch.Tensor
    state: dict[str, torch.Tensor]
    epochs_without_improvement: int = 0

    @classmethod
    def start(cls, model: EnvironmentModel) -> _BestWeights:
        """No epoch yet: infinite errors and the initial weights."""
        n_members = model.n_networks
        return cls(torch.full((n_members,), math.inf), torch.zeros(n_members, dtype=torch.long),
                   {k: v.detach().clone() for k, v in model.named_parameters()})

    def update(self, model: EnvironmentModel, val: torch.Tensor, epoch: int,
               device: torch.device) -> None:
        """Keep the weights of the members whose error ``val`` ``[E]`` improved in ``epoch``."""
        improved = val < self.val
        if not bool(improved.any()):
            self.epochs_without_improvement += 1
            return
        self.epochs_without_improvement = 0
        self.val = torch.where(improved, val, self.val)
        self.epoch[improved] = epoch
        mask = improved.to(device)
        with torch.no_grad():
            for key, value in model.named_parameters():
                keep = mask.view(-1, *([1] * (value.dim() - 1)))
                self.state[key] = torch.where(keep, value.detach(), self.state[key])

    def restore(self, model: EnvironmentModel) -> None:
        """Load every member's best weights into ``model``."""
        with torch.no_grad():
            for key, value in model.named_parameters():
                value.copy_(self.state[key])


@dataclass
class _History:
    """What the epoch loop did: its counts, the last training loss and the epoch times."""

    epochs: int = 0
    batches: int = 0
    train_loss: float = math.nan
    stopped_early: bool = False
    epoch_times: list[float] = field(default_factory=list)

    def record(self, n_batches: int, train_loss: float) -> None:
        """Count a finished epoch; a non-finite loss ends training with :class:`NonFiniteError`."""
        self.batches += n_batches
        self.epochs += 1
        self.train_loss = train_loss
        if not math.isfinite(train_loss):
            raise NonFiniteError(
                f"environment model loss became {train_loss} in epoch {self.epochs}: "
                "lower the learning rate (lr) or check the dataset"
            )


def _fit(
    model: EnvironmentModel,
    rows: _Rows,
    config: EnvironmentModelConfiguration,
    patience: int,
    device: torch.device,
    log_dir: str | Path | None,
    progress: bool,
) -> tuple[_History, _BestWeights]:
    """The epoch loop: train, validate, keep the best weights, stop early or at a limit."""
    optimizer = _make_optimizer(list(model.parameters()), config.lr)
    shuffle = torch.Generator().manual_seed(config.seed * 7919 + 17)
    writer = SummaryWriter(str(log_dir)) if log_dir is not None else None
    best = _BestWeights.start(model)
    history = _History()
    batches_per_epoch = math.ceil(rows.n_train / config.batch_size)
    max_batches = config.max_number_of_training_batches or math.inf
    max_epochs = config.max_number_of_training_epochs or math.inf
    model.train()
    try:
        with _Progress(progress, batches_per_epoch) as bar:
            while history.epochs < max_epochs and history.batches < max_batches:
                epoch_start = time.perf_counter()
                order = torch.randperm(rows.n_train, generator=shuffle).to(device)
                n_batches = int(min(batches_per_epoch, max_batches - history.batches))
                bar.update(completed=0, total=n_batches,
                           description=f"model epoch {history.epochs + 1}")
                history.record(n_batches, _train_epoch(model, optimizer, rows, order, n_batches,
                                                       config, device, bar))
                val = _validate(model, rows)
                best.update(model, val, history.epochs, device)
                history.epoch_times.append(time.perf_counter() - epoch_start)
                _report_epoch(bar, writer, history, n_batches, val, best, patience)
                if best.epochs_without_improvement >= patience:
                    history.stopped_early = True
                    break
    finally:
        if writer is not None:
            writer.close()
    return history, best


def _train_epoch(
    model: EnvironmentModel,
    optimizer: torch.optim.Optimizer,
    rows: _Rows,
    order: torch.Tensor,
    n_batches: int,
    config: EnvironmentModelConfiguration,
    device: torch.device,
    bar: _Progress,
) -> float:
    """One pass of ``n_batches`` gradient steps; the mean training loss.

    ``order`` is the ``[n_train]`` permutation of the training rows whose first
    ``n_batches · batch_size`` entries, in batches of ``batch_size``, make the epoch.
    """
    batch_size = config.batch_size
    bfloat16 = config.precision == "bfloat16"
    loss_sum = torch.zeros((), device=device)
    for i, idx in enumerate(order[: n_batches * batch_size].split(batch_size)):
        if bfloat16:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                low = model.forward_normalized(rows.train_x[idx])
            outputs = EnsembleOutput(*(o.float() for o in low))
        else:
            outputs = model.forward_normalized(rows.train_x[idx])
        loss, _ = model.loss(outputs, rows.train_d[idx], rows.train_r[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach()
        if i % 64 == 63:
            bar.update(completed=i + 1)
    return float(loss_sum) / n_batches


def _validate(model: EnvironmentModel, rows: _Rows) -> torch.Tensor:
    """``[E]`` per-member validation MSE on the CPU, computed in eval mode."""
    model.eval()
    val = validation_mse(model, rows.val_x, rows.val_d, rows.val_r).cpu()
    model.train()
    return val


def _report_epoch(
    bar: _Progress,
    writer: SummaryWriter | None,
    history: _History,
    n_batches: int,
    val: torch.Tensor,
    best: _BestWeights,
    patience: int,
) -> None:
    """Show the finished epoch on the progress bar and log its scalars to TensorBoard."""
    epochs = history.epochs
    bar.update(completed=n_batches, description=(
        f"model epoch {epochs}: val MSE {float(val.mean()):.4g} "
        f"(best {float(best.val.mean()):.4g}, "
        f"{best.epochs_without_improvement}/{patience} w/o improvement)"))
    if writer is None:
        return
    writer.add_scalar("model/train_loss", history.train_loss, epochs)
    writer.add_scalar("model/val_mse", float(val.mean()), epochs)
    writer.add_scalar("model/best_val_mse", float(best.val.mean()), epochs)
    writer.add_scalar("model/epoch_time_s", history.epoch_times[-1], epochs)
    for e in range(len(val)):
        writer.add_scalar(f"model/val_mse_member_{e}", float(val[e]), epochs)


def _finalise(model: EnvironmentModel, best: _BestWeights, n_elites: int | None) -> torch.Tensor:
    """Restore the best weights, set the elites and switch to eval mode; ``[K]`` elites."""
    best.restore(model)
    n_elites = n_elites or model.n_networks
    elites = torch.argsort(best.val, stable=True)[:n_elites].sort().values
    model.set_elites(elites)
    model.eval()
    return elites


def _metrics(
    model: EnvironmentModel,
    rows: _Rows,
    history: _History,
    best: _BestWeights,
    elites: torch.Tensor,
    *,
    patience: int,
    dataset_hash: str,
    start: float,
) -> dict[str, Any]:
    """The metrics :func:`train_environment_model` returns (see its docstring).

    ``start`` is the ``time.perf_counter()`` reading taken when training began.
    """
    per_member = [float(v) for v in best.val]
    epoch_times = history.epoch_times
    return {
        "val_mse": float(np.mean(per_member)),
        "val_mse_per_member": per_member,
        "val_mse_elites": float(np.mean([per_member[e] for e in elites.tolist()])),
        "val_mse_mean_predictor": rows.mean_predictor_mse(model.obs_dim),
        "best_epoch_per_member": [int(e) for e in best.epoch],
        "elites": [int(e) for e in elites],
        "epochs": history.epochs,
        "batches": history.batches,
        "patience": patience,
        "stopped_early": history.stopped_early,
        "train_loss": history.train_loss,
        "epoch_time_s": float(np.mean(epoch_times)) if epoch_times else 0.0,
        "time_s": time.perf_counter() - start,
        "n_train": rows.n_train,
        "n_val": rows.n_val,
        "dataset_hash": dataset_hash,
    }
