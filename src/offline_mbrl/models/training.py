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
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field, ValidationError, model_validator

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


def _without_resets(indices: torch.Tensor, dataset: OfflineDataset) -> torch.Tensor:
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
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

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
    device = resolve_device(config.device)
    if device.type == "cpu":
        keep_freed_memory()
    _check_finite(dataset)
    start = time.perf_counter()
    name = env_name or dataset.name or ""
    patience = config.training_patience or default_patience(name)
    dataset_hash = dataset.content_hash()
    train_idx, val_idx = split_indices(len(dataset), config.validation_fraction, config.seed,
                                       dataset_hash)

    def column(array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array, dtype=np.float32), device=device)

    obs, action = column(dataset.observations), column(dataset.actions)
    next_obs, reward = column(dataset.next_observations), column(dataset.rewards)
    tr, va = (_without_resets(idx, dataset).to(device) for idx in (train_idx, val_idx))

    model = EnvironmentModel(
        dataset.obs_dim, dataset.act_dim, type=config.type, n_networks=config.n_networks,
        n_hidden_layers=config.n_hidden_layers, n_hidden_units=config.n_hidden_units,
        reward_n_hidden_units=config.reward_n_hidden_units, env_name=env_name, seed=config.seed,
    ).to(device)
    if initial is not None:
        state = initial.state_dict()
        state["elites"] = model.elites  # chosen again below
        model.load_state_dict(state)
    norm = model.normalizer
    # Statistics from the training split only; the clipping range from all data.
    norm.fit(obs[tr], action[tr], next_obs[tr], reward[tr],
             range_obs=torch.cat([obs, next_obs]), range_reward=reward)
    # Normalise once up front so that a batch is a single gather.
    inputs = norm.inputs(obs, action)
    delta_t, reward_t = norm.targets(obs, next_obs, reward)
    train_x, train_d, train_r = inputs[tr], delta_t[tr], reward_t[tr]
    val_x, val_d, val_r = inputs[va], delta_t[va], reward_t[va]
    del obs, action, next_obs, reward, inputs, delta_t, reward_t
    n_train, n_val = int(train_x.shape[0]), int(val_x.shape[0])
    # The mean predictor outputs the training mean, i.e. 0 in normalised units.
    mean_predictor = float((val_d.square().sum() + val_r.square().sum())
                           / (n_val * (model.obs_dim + 1)))

    params = list(model.parameters())
    optimizer = _make_optimizer(params, config.lr)
    shuffle = torch.Generator().manual_seed(config.seed * 7919 + 17)
    writer = None
    if log_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(log_dir))

    n_members = model.n_networks
    best_val = torch.full((n_members,), math.inf)
    best_epoch = torch.zeros(n_members, dtype=torch.long)
    best_state = {k: v.detach().clone() for k, v in model.named_parameters()}
    batch_size = config.batch_size
    batches_per_epoch = math.ceil(n_train / batch_size)
    max_batches = config.max_number_of_training_batches or math.inf
    max_epochs = config.max_number_of_training_epochs or math.inf
    epochs = batches = epochs_without_improvement = 0
    stopped_early = False
    train_loss = math.nan
    epoch_times: list[float] = []
    bfloat16 = config.precision == "bfloat16"

    model.train()
    try:
        with _Progress(progress, batches_per_epoch) as bar:
            while epochs < max_epochs and batches < max_batches:
                epoch_start = time.perf_counter()
                perm = torch.randperm(n_train, generator=shuffle).to(device)
                loss_sum = torch.zeros((), device=device)
                n_batches = int(min(batches_per_epoch, max_batches - batches))
                bar.update(completed=0, total=n_batches,
                           description=f"model epoch {epochs + 1}")
                for i, idx in enumerate(perm[: n_batches * batch_size].split(batch_size)):
                    if bfloat16:
                        with torch.autocast(device.type, dtype=torch.bfloat16):
                            low = model.forward_normalized(train_x[idx])
                        outputs = EnsembleOutput(*(o.float() for o in low))
                    else:
                        outputs = model.forward_normalized(train_x[idx])
                    loss, _ = model.loss(outputs, train_d[idx], train_r[idx])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    loss_sum += loss.detach()
                    if i % 64 == 63:
                        bar.update(completed=i + 1)
                batches += n_batches
                epochs += 1
                train_loss = float(loss_sum) / n_batches
                if not math.isfinite(train_loss):
                    raise NonFiniteError(
                        f"environment model loss became {train_loss} in epoch {epochs}: "
                        "lower the learning rate (lr) or check the dataset"
                    )

                model.eval()
                val = validation_mse(model, val_x, val_d, val_r).cpu()
                model.train()
                improved = val < best_val
                if bool(improved.any()):
                    epochs_without_improvement = 0
                    best_val = torch.where(improved, val, best_val)
                    best_epoch[improved] = epochs
                    mask = improved.to(device)
                    with torch.no_grad():
                        for key, value in model.named_parameters():
                            keep = mask.view(-1, *([1] * (value.dim() - 1)))
                            best_state[key] = torch.where(keep, value.detach(), best_state[key])
                else:
                    epochs_without_improvement += 1
                epoch_times.append(time.perf_counter() - epoch_start)
                bar.update(completed=n_batches, description=(
                    f"model epoch {epochs}: val MSE {float(val.mean()):.4g} "
                    f"(best {float(best_val.mean()):.4g}, "
                    f"{epochs_without_improvement}/{patience} w/o improvement)"))
                if writer is not None:
                    writer.add_scalar("model/train_loss", train_loss, epochs)
                    writer.add_scalar("model/val_mse", float(val.mean()), epochs)
                    writer.add_scalar("model/best_val_mse", float(best_val.mean()), epochs)
                    writer.add_scalar("model/epoch_time_s", epoch_times[-1], epochs)
                    for e in range(n_members):
                        writer.add_scalar(f"model/val_mse_member_{e}", float(val[e]), epochs)
                if epochs_without_improvement >= patience:
                    stopped_early = True
                    break
    finally:
        if writer is not None:
            writer.close()

    with torch.no_grad():
        for key, value in model.named_parameters():
            value.copy_(best_state[key])
    n_elites = config.n_elites or n_members
    elites = torch.argsort(best_val, stable=True)[:n_elites].sort().values
    model.set_elites(elites)
    model.eval()
    per_member = [float(v) for v in best_val]
    metrics: dict[str, Any] = {
        "val_mse": float(np.mean(per_member)),
        "val_mse_per_member": per_member,
        "val_mse_elites": float(np.mean([per_member[e] for e in elites.tolist()])),
        "val_mse_mean_predictor": mean_predictor,
        "best_epoch_per_member": [int(e) for e in best_epoch],
        "elites": [int(e) for e in elites],
        "epochs": epochs,
        "batches": batches,
        "patience": patience,
        "stopped_early": stopped_early,
        "train_loss": train_loss,
        "epoch_time_s": float(np.mean(epoch_times)) if epoch_times else 0.0,
        "time_s": time.perf_counter() - start,
        "n_train": n_train,
        "n_val": n_val,
        "dataset_hash": dataset_hash,
    }
    return model, metrics
