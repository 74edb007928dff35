"""TabDDPM (Kotelnikov et al., 2023): diffusion models for tabular data, written here in PyTorch.

The paper's model, in this file's order:

1. **Data.** Numerical columns go through a quantile transform to a standard normal
   (`QuantileNormal`); categorical columns become one-hot vectors; in a classification table the
   target is not a feature but the class label y the denoiser is conditioned on (a regression
   target is one more numerical column). Nulls: a categorical null is one more category; a
   numerical null is imputed with the median and flagged in an extra categorical "is null" column.
2. **Gaussian diffusion** on the numerical part (DDPM, cosine schedule, the denoiser predicts the
   noise, mean-squared error).
3. **Multinomial diffusion** on each categorical column (Hoogeboom et al., 2021): noise keeps a
   category with probability ᾱ_t and otherwise draws one uniformly; the denoiser predicts x̂_0
   (logits per column) and the loss is KL(q(x_{t-1}|x_t,x_0) ‖ q(x_{t-1}|x_t,x̂_0)), averaged
   over categorical columns. Everything is in log space, as in the paper's code.
4. **Denoiser**: an MLP. The input (numerical part, one-hot categorical part) is projected to
   `dim_t` and added to the sinusoidal timestep embedding (plus the class embedding); then
   Linear-ReLU-Dropout blocks and a linear head with the input's width.
5. **Training**: AdamW for `epochs` passes over the rows (100 to 1,000 steps; a small table is
   memorised long before it is learned better), uniform timesteps, the sum of the Gaussian and
   multinomial losses, the learning rate annealed linearly to zero, an exponential moving average
   of the weights used for sampling. **Sampling**: ancestral, from t=T-1 to 0, over all T steps
   as in the paper or (the default) `sample_steps` evenly spaced ones: DDIM steps for the
   Gaussian part, the strided chain's exact posterior for the categories, all columns in one
   tensor operation per step; y drawn from the training class frequencies. Fixed values
   (conditional sampling): the class label when the target is fixed,
   and for any other column the "replacement" method, which at each step overwrites the known
   coordinates with a sample of q(x_{t-1} | x_0 = the fixed value).

`TabDDPM` wraps it all in the synthesizers' verbs: fit, sample, save, load. It runs on CUDA when
present (`device: auto`). A saved model is tensors and plain values only (`torch.load` with
`weights_only=True`), no pickled objects.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field
from scipy.special import ndtr, ndtri
from torch import nn

from generators.tabular.data import TableMeta
from synth.errors import SpecError
from synth.spec import StrictModel

NULL_SUFFIX = " is null"
"""Suffix of the extra categorical column that flags a numerical null."""
QUANTILE_EPS = 1e-7
NORMAL_BOUND = float(ndtri(1 - QUANTILE_EPS))
"""The quantile transform clips its uniform to [ε, 1-ε], so a transformed value is within ±5.2."""


class TabDDPMParams(StrictModel):
    """Hyperparameters; defaults follow the paper's tuned small-table settings."""

    model: Literal["tabddpm"] = "tabddpm"
    steps: int | None = Field(
        None, ge=1, description="Training steps (batches); null: `epochs` passes over the training rows, 100 to 1000 steps"
    )
    epochs: float = Field(200, gt=0, description="Passes over the training rows when `steps` is null")
    batch_size: int = Field(256, ge=2)
    lr: float = Field(2e-3, gt=0, description="AdamW learning rate, annealed linearly to 0")
    weight_decay: float = Field(1e-4, ge=0)
    num_timesteps: int = Field(
        100, ge=2, description="Diffusion steps T (the paper tunes 100 or 1000; 100 chosen on small tables)"
    )
    layers: list[int] = Field([256, 256], min_length=1, description="Widths of the MLP's hidden layers")
    dim_t: int = Field(128, ge=2, description="Width of the timestep and class embeddings")
    dropout: float = Field(0.0, ge=0, lt=1)
    ema_decay: float = Field(0.999, ge=0, lt=1, description="EMA of weights used for sampling; 0: none")
    sample_steps: int | None = Field(
        50, ge=1, description="Denoising steps when sampling, evenly spaced over T (null: all T, as in the paper)"
    )
    sample_eta: float = Field(
        1.0, ge=0, le=1, description="Noise of the Gaussian DDIM steps: 1 the DDPM posterior's (the paper's), 0 none"
    )
    conditional: bool = Field(True, description="Condition on a categorical target as the class label")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present")


# ---------------------------------------------------------------- 1. data


class QuantileNormal:
    """Maps one column through its empirical quantiles onto a standard normal, and back.

    Like scikit-learn's QuantileTransformer(output_distribution="normal"), with
    n_quantiles = clip(rows // 30, 10, 1000) as in the paper; kept as plain arrays so it saves
    with the weights.
    """

    def __init__(self, quantiles: np.ndarray):
        self.quantiles = quantiles
        self.references = np.linspace(0, 1, len(quantiles))

    @classmethod
    def fit(cls, values: np.ndarray) -> QuantileNormal:
        count = int(np.clip(len(values) // 30, 10, 1000))
        return cls(np.quantile(values, np.linspace(0, 1, count)))

    def transform(self, values: np.ndarray) -> np.ndarray:
        # Interpolate both ways and average, so repeated quantiles (ties) map to their middle.
        up = np.interp(values, self.quantiles, self.references)
        down = -np.interp(-values, -self.quantiles[::-1], -self.references[::-1])
        return ndtri(np.clip((up + down) / 2, QUANTILE_EPS, 1 - QUANTILE_EPS))

    def inverse(self, normal: np.ndarray) -> np.ndarray:
        return np.interp(ndtr(normal), self.references, self.quantiles)


@dataclass
class Encoded:
    """A table as the diffusion sees it: numerical matrix, category indices, class labels."""

    x_num: torch.Tensor  # (rows, numerical columns), float
    x_cat: torch.Tensor  # (rows, categorical columns), long
    y: torch.Tensor | None  # (rows,), long; None when not class-conditional


class TableEncoder:
    """Turns the learned columns into `Encoded` and back; its state saves as plain values."""

    def __init__(self, state: dict[str, Any]):
        self.state = state
        self.numerical: list[str] = state["numerical"]  # numerical and datetime columns, in order
        self.datetimes: list[str] = state["datetimes"]
        self.categorical: list[str] = state["categorical"]  # with the numerical "is null" flags last
        self.categories: list[list] = state["categories"]
        self.label: str | None = state["label"]
        self.classes: list = state["classes"]
        self.class_counts: list[int] = state["class_counts"]
        self.medians: list[float] = state["medians"]
        self.columns: list[str] = state["columns"]
        self.quantiles = [QuantileNormal(np.asarray(q)) for q in state["quantiles"]]

    @classmethod
    def fit(cls, frame: pd.DataFrame, meta: TableMeta, conditional: bool) -> TableEncoder:
        roles = meta.learned_roles()
        label = meta.target if conditional and meta.task == "classification" else None
        numerical = [c for c, r in roles.items() if r in ("numerical", "datetime") and c != label]
        with_nulls = [c for c in numerical if frame[c].isna().any()]
        categorical = [c for c, r in roles.items() if r in ("categorical", "boolean") and c != label]
        numbers = {c: _as_float(frame[c]) for c in numerical}
        medians = [float(np.nanmedian(numbers[c])) for c in numerical]
        filled = {c: np.where(np.isnan(numbers[c]), m, numbers[c]) for c, m in zip(numerical, medians)}
        flags = {c + NULL_SUFFIX: frame[c].isna() for c in with_nulls}
        cat_values = {c: frame[c] for c in categorical} | flags
        classes, counts = _categories(frame[label]) if label else ([], [])
        return cls({
            "numerical": numerical,
            "datetimes": [c for c in numerical if roles[c] == "datetime"],
            "categorical": list(cat_values),
            "categories": [_categories(v)[0] for v in cat_values.values()],
            "label": label, "classes": classes, "class_counts": counts,
            "medians": medians,
            "quantiles": [QuantileNormal.fit(filled[c]).quantiles.tolist() for c in numerical],
            "columns": list(roles),
        })  # fmt: skip

    @property
    def num_classes(self) -> list[int]:
        """Categories per categorical column (the multinomial parts)."""
        return [len(c) for c in self.categories]

    def encode(self, frame: pd.DataFrame) -> Encoded:
        num = [q.transform(self._filled(frame, c, m)) for c, m, q in zip(self.numerical, self.medians, self.quantiles)]
        cat = [_indices(self._categorical_values(frame, c), cats) for c, cats in zip(self.categorical, self.categories)]
        y = _indices(frame[self.label], self.classes) if self.label else None
        return Encoded(
            x_num=torch.tensor(np.stack(num, 1) if num else np.zeros((len(frame), 0)), dtype=torch.float32),
            x_cat=torch.tensor(np.stack(cat, 1) if cat else np.zeros((len(frame), 0)), dtype=torch.long),
            y=None if y is None else torch.tensor(y, dtype=torch.long),
        )

    def decode(self, enc: Encoded) -> pd.DataFrame:
        x_num, x_cat = enc.x_num.cpu().numpy().astype(float), enc.x_cat.cpu().numpy()
        out: dict[str, Any] = {}
        for j, (name, q) in enumerate(zip(self.numerical, self.quantiles)):
            out[name] = q.inverse(x_num[:, j])
        for j, (name, cats) in enumerate(zip(self.categorical, self.categories)):
            out[name] = pd.Series(_object_array(cats)[x_cat[:, j]], dtype=object)
        if self.label:
            out[self.label] = pd.Series(_object_array(self.classes)[enc.y.cpu().numpy()], dtype=object)
        frame = pd.DataFrame(out)
        for name in self.numerical:
            if name + NULL_SUFFIX in frame:
                frame.loc[frame.pop(name + NULL_SUFFIX).astype(bool), name] = np.nan
            if name in self.datetimes:
                frame[name] = pd.to_datetime(frame[name].round(), unit="ns")
        return frame[self.columns]

    def _filled(self, frame: pd.DataFrame, column: str, median: float) -> np.ndarray:
        values = _as_float(frame[column])
        return np.where(np.isnan(values), median, values)

    def _categorical_values(self, frame: pd.DataFrame, column: str) -> pd.Series:
        if column.endswith(NULL_SUFFIX) and column not in frame:
            return frame[column[: -len(NULL_SUFFIX)]].isna()
        return frame[column]


def _object_array(values: list) -> np.ndarray:
    """A 1-d object array of the values as they are (np.array would turn tuples into rows)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _as_float(values: pd.Series) -> np.ndarray:
    if pd.api.types.is_datetime64_any_dtype(values):
        nanoseconds = values.to_numpy("datetime64[ns]").astype("int64").astype(float)
        return np.where(values.isna(), np.nan, nanoseconds)
    return pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)


def _categories(values: pd.Series) -> tuple[list, list[int]]:
    """Distinct values (null as None) in a stable order, with their counts."""
    counts = values.astype(object).where(values.notna(), None).value_counts(dropna=False)
    pairs = sorted(((_plain(v), int(n)) for v, n in counts.items()), key=lambda p: (p[0] is None, str(p[0])))
    return [v for v, _ in pairs], [n for _, n in pairs]


def _plain(value: Any) -> Any:
    """A Python scalar (saves with `weights_only`); None for any null."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def _indices(values: pd.Series, categories: list) -> np.ndarray:
    lookup = {v: i for i, v in enumerate(categories)}
    return np.array([lookup[_plain(v)] for v in values], dtype=np.int64)


# ---------------------------------------------------------------- 2 and 3. the diffusion


def cosine_betas(num_timesteps: int, s: float = 0.008) -> torch.Tensor:
    """β_t of the cosine schedule (Nichol & Dhariwal, 2021), capped at 0.999."""
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    alpha_bar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)


class GaussianMultinomialDiffusion(nn.Module):
    """Gaussian diffusion over the numerical part, multinomial over each categorical column.

    Timesteps are 0..T-1; x_t is the state after t+1 noising steps, so t=0 is one step from data,
    and "step -1" is the data itself (ᾱ = 1). Sampling may stride over the timesteps (`sample`'s
    `steps`): the Gaussian part then takes DDIM steps (Song et al., 2021; with eta 1 a stride of
    one is the DDPM posterior), and the multinomial part the exact posterior q(x_s | x_t, x̂_0) of
    the strided chain, since composed uniform-noise steps are one such step with ᾱ_t / ᾱ_s.

    The categorical columns sit side by side in one flat vector (what the denoiser sees); for the
    per-column softmax, logsumexp and argmax they are gathered into a padded (rows, columns, K_max)
    block, so each is one tensor operation whatever the number of columns.
    """

    def __init__(self, num_numerical: int, num_classes: list[int], num_timesteps: int):
        super().__init__()
        self.num_numerical, self.num_classes, self.T = num_numerical, num_classes, num_timesteps
        self.slices = _slices(num_classes)
        alpha_bar = torch.cumprod(1 - cosine_betas(num_timesteps), 0)
        # Index s + 1 holds step s, for s in -1..T-1: the data (ᾱ = 1) first.
        alpha_bar_ext = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar])
        log_k = torch.cat([torch.full((k,), math.log(k), dtype=torch.float64) for k in num_classes] or [torch.zeros(0)])
        widest = max(num_classes, default=0)
        filler = int(sum(num_classes))  # gathers from an extra column of the fill value
        pad_index = [[s.start + i if i < s.stop - s.start else filler for i in range(widest)] for s in self.slices]
        buffers = {
            "alpha_bar": alpha_bar, "alpha_bar_ext": alpha_bar_ext,
            "sqrt_alpha_bar": alpha_bar.sqrt(), "sqrt_1m_alpha_bar": (1 - alpha_bar).sqrt(),
            "log_alpha_bar_ext": alpha_bar_ext.log(), "log_k": log_k,
        }  # fmt: skip
        for name, value in buffers.items():
            self.register_buffer(name, value.float(), persistent=False)
        self.register_buffer("pad_index", torch.tensor(pad_index, dtype=torch.long).reshape(len(num_classes), widest),
                             persistent=False)  # fmt: skip
        column_of = [j for j, k in enumerate(num_classes) for _ in range(k)]
        self.register_buffer("column_of", torch.tensor(column_of, dtype=torch.long), persistent=False)
        self.register_buffer("offsets", torch.tensor([s.start for s in self.slices], dtype=torch.long), persistent=False)

    # -- Gaussian part

    def q_sample_num(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return _at(self.sqrt_alpha_bar, t) * x0 + _at(self.sqrt_1m_alpha_bar, t) * noise

    def p_sample_num(self, x_t: torch.Tensor, t: int, s: int, eps: torch.Tensor, g: torch.Generator,
                     eta: float) -> torch.Tensor:  # fmt: skip
        """x_s from x_t (s < t; s = -1 is the data) by a DDIM step from the predicted noise.

        x̂_0 is clipped to the range the quantile transform can produce (and the noise re-derived
        from it): near t=T the cosine schedule divides by √ᾱ_t ≈ 1e-4, and an under-trained
        denoiser's small error in the noise would otherwise blow x̂_0 (and the sample) up.
        """
        a_t, a_s = self.alpha_bar_ext[t + 1], self.alpha_bar_ext[s + 1]
        x0 = ((x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-NORMAL_BOUND, NORMAL_BOUND)
        eps = (x_t - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        sigma = eta * ((1 - a_s) / (1 - a_t) * (1 - a_t / a_s)).clamp(min=0).sqrt()
        noise = torch.randn(x_t.shape, generator=g, device=x_t.device)
        return a_s.sqrt() * x0 + (1 - a_s - sigma**2).clamp(min=0).sqrt() * eps + sigma * noise

    # -- multinomial part (log space; x is the concatenated log one-hot of all columns)

    def log_onehot(self, x_cat: torch.Tensor) -> torch.Tensor:
        """Category indices (rows, columns) -> the flat log one-hot (log 0 kept finite, as -69)."""
        out = torch.full((len(x_cat), int(sum(self.num_classes))), LOG_ZERO, device=x_cat.device)
        return out.scatter_(1, x_cat + self.offsets, 0.0) if self.num_classes else out

    def padded(self, flat: torch.Tensor, fill: float) -> torch.Tensor:
        """(rows, flat width) -> (rows, columns, K_max), `fill` past each column's categories."""
        extra = torch.full((len(flat), 1), fill, device=flat.device, dtype=flat.dtype)
        return torch.cat([flat, extra], 1)[:, self.pad_index]

    def q_pred(self, log_x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """log q(x_t | x_0) = log(ᾱ_t x_0 + (1 - ᾱ_t) / K); at t = -1 it is x_0."""
        log_ab = _at(self.log_alpha_bar_ext, t + 1)
        return torch.logaddexp(log_x0 + log_ab, _log_1m_exp(log_ab) - self.log_k)

    def q_posterior(self, log_x0: torch.Tensor, log_x_t: torch.Tensor, t: torch.Tensor,
                    s: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """log q(x_s | x_t, x_0) for s < t (default s = t - 1), normalised within each column.

        ∝ q(x_t | x_s) q(x_s | x_0), where q(x_t | x_s), as a function of x_s, is
        log(ᾱ_t/ᾱ_s x_t + (1 - ᾱ_t/ᾱ_s) / K); at s = -1 it is x_0's side.
        """
        s = t - 1 if s is None else s
        log_ratio = _at(self.log_alpha_bar_ext, t + 1) - _at(self.log_alpha_bar_ext, s + 1)
        transition = torch.logaddexp(log_x_t + log_ratio, _log_1m_exp(log_ratio) - self.log_k)
        unnormed = self.q_pred(log_x0, s) + transition
        return unnormed - self.column_logsumexp(unnormed)

    def column_logsumexp(self, log_x: torch.Tensor) -> torch.Tensor:
        """logsumexp within each column's categories, spread back over them."""
        return self.padded(log_x, -math.inf).logsumexp(2)[:, self.column_of]

    def column_log_softmax(self, logits: torch.Tensor) -> torch.Tensor:
        return logits - self.column_logsumexp(logits)

    def sample_categorical(self, log_probs: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """One category per column (Gumbel-max), as a log one-hot."""
        if not self.slices:
            return log_probs
        uniform = torch.rand(log_probs.shape, generator=g, device=log_probs.device)
        # -log(-log u) with both logs kept finite; the parentheses matter: `-x.clamp()` is `-(x.clamp())`.
        gumbel = -torch.log((-torch.log(uniform.clamp(min=1e-30))).clamp(min=1e-30))
        return self.log_onehot(self.to_indices(log_probs + gumbel))

    def to_indices(self, log_x: torch.Tensor) -> torch.Tensor:
        if not self.slices:
            return torch.zeros((len(log_x), 0), dtype=torch.long, device=log_x.device)
        return self.padded(log_x, -math.inf).argmax(2)

    # -- the training loss

    def loss(self, denoiser: nn.Module, batch: Encoded, g: torch.Generator) -> torch.Tensor:
        """Gaussian MSE on the noise plus the multinomial KL per categorical column, at uniform t."""
        rows, device = len(batch.x_num), batch.x_num.device
        t = torch.randint(0, self.T, (rows,), generator=g, device=device)
        noise = torch.randn(batch.x_num.shape, generator=g, device=device)
        x_num_t = self.q_sample_num(batch.x_num, t, noise)
        log_x0 = self.log_onehot(batch.x_cat)
        log_x_t = self.sample_categorical(self.q_pred(log_x0, t), g)
        out = denoiser(torch.cat([x_num_t, log_x_t.exp()], 1), t, batch.y)
        loss = ((out[:, : self.num_numerical] - noise) ** 2).mean(1) if self.num_numerical else 0.0
        if self.num_classes:
            log_x0_hat = self.column_log_softmax(out[:, self.num_numerical :])
            loss = loss + self._multinomial_loss(log_x0, log_x_t, log_x0_hat, t)
        return loss.mean()

    def _multinomial_loss(self, log_x0, log_x_t, log_x0_hat, t) -> torch.Tensor:
        true = self.q_posterior(log_x0, log_x_t, t)
        model = self.q_posterior(log_x0_hat, log_x_t, t)
        kl = (true.exp() * (true - model)).sum(1)
        decoder_nll = -(log_x0.exp() * model).sum(1)
        return torch.where(t == 0, decoder_nll, kl) / len(self.num_classes)

    # -- sampling

    def schedule(self, steps: int | None) -> list[int]:
        """The timesteps visited, from T-1 down to 0: all of them, or `steps` evenly spaced."""
        if steps is None or steps >= self.T:
            return list(range(self.T - 1, -1, -1))
        return sorted({int(round(v)) for v in np.linspace(0, self.T - 1, max(steps, 1))}, reverse=True)

    @torch.no_grad()
    def sample(self, denoiser: nn.Module, y: torch.Tensor | None, fixed: Fixed, rows: int, g: torch.Generator,
               steps: int | None = None, eta: float = 1.0) -> Encoded:  # fmt: skip
        """Ancestral sampling from pure noise over `schedule(steps)`; `fixed` coordinates are
        replaced at every step."""
        device = self.sqrt_alpha_bar.device
        x_num = torch.randn((rows, self.num_numerical), generator=g, device=device)
        log_x = self.sample_categorical(torch.zeros((rows, int(sum(self.num_classes))), device=device), g)
        timesteps = self.schedule(steps)
        for t, s in zip(timesteps, [*timesteps[1:], -1]):
            x_num, log_x = fixed.replace(self, x_num, log_x, t, g)
            out = denoiser(torch.cat([x_num, log_x.exp()], 1), torch.full((rows,), t, device=device), y)
            x_num = self.p_sample_num(x_num, t, s, out[:, : self.num_numerical], g, eta)
            if self.num_classes:
                log_x0_hat = self.column_log_softmax(out[:, self.num_numerical :])
                log_x = self.sample_categorical(self.q_posterior(log_x0_hat, log_x, _full(rows, t, device),
                                                                 _full(rows, s, device)), g)  # fmt: skip
        x_num, log_x = fixed.replace(self, x_num, log_x, -1, g)
        return Encoded(x_num=x_num, x_cat=self.to_indices(log_x), y=y)


LOG_ZERO = math.log(1e-30)


def _log_1m_exp(log_a: torch.Tensor) -> torch.Tensor:
    """log(1 - a) from log a (stable near a = 1; -inf at a = 1)."""
    return torch.log(-torch.expm1(log_a))


def _full(rows: int, value: int, device) -> torch.Tensor:
    return torch.full((rows,), value, device=device, dtype=torch.long)


@dataclass
class Fixed:
    """Known coordinates for conditional sampling by replacement: numerical (column, value in the
    transformed space) and categorical (column, category index)."""

    num: list[tuple[int, float]]
    cat: list[tuple[int, int]]

    def replace(self, diffusion: GaussianMultinomialDiffusion, x_num, log_x, step: int, g: torch.Generator):
        """Overwrite the known coordinates with a sample of q(x_step | x_0 = known); exact at step -1."""
        rows, device = len(x_num), x_num.device
        t = torch.full((rows,), max(step, 0), device=device, dtype=torch.long)
        for j, value in self.num:
            x0 = torch.full((rows,), value, device=device)
            noise = torch.randn((rows,), generator=g, device=device)
            x_num[:, j] = x0 if step < 0 else diffusion.q_sample_num(x0[:, None], t, noise[:, None])[:, 0]
        if self.cat:
            known = diffusion.to_indices(log_x)
            for j, index in self.cat:
                known[:, j] = index
            log_known = diffusion.log_onehot(known)
            noisy = log_known if step < 0 else diffusion.sample_categorical(diffusion.q_pred(log_known, t), g)
            columns = torch.cat([torch.arange(diffusion.slices[j].start, diffusion.slices[j].stop, device=device)
                                 for j, _ in self.cat])  # fmt: skip
            log_x = log_x.clone()
            log_x[:, columns] = noisy[:, columns]
        return x_num, log_x


def _slices(num_classes: list[int]) -> list[slice]:
    ends = np.cumsum([0, *num_classes])
    return [slice(int(a), int(b)) for a, b in zip(ends[:-1], ends[1:])]


def _at(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """values[t] as a column, to broadcast over a batch's features."""
    return values[t][:, None]


# ---------------------------------------------------------------- 4. the denoiser


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (Vaswani et al.; as in DDPM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], 1)
    return F.pad(emb, (0, dim % 2))


class MLPDenoiser(nn.Module):
    """proj(x) + time embedding (+ SiLU(class embedding)) -> [Linear, ReLU, Dropout]* -> Linear."""

    def __init__(self, d_in: int, num_labels: int, layers: list[int], dim_t: int, dropout: float):
        super().__init__()
        self.dim_t = dim_t
        self.proj = nn.Linear(d_in, dim_t)
        self.time_embed = nn.Sequential(nn.Linear(dim_t, dim_t), nn.SiLU(), nn.Linear(dim_t, dim_t))
        self.label_embed = nn.Embedding(num_labels, dim_t) if num_labels else None
        blocks, width = [], dim_t
        for size in layers:
            blocks += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        self.mlp = nn.Sequential(*blocks, nn.Linear(width, d_in))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.dim_t))
        if self.label_embed is not None:
            emb = emb + F.silu(self.label_embed(y))
        return self.mlp(self.proj(x) + emb)


# ---------------------------------------------------------------- 5. the synthesizer


class TabDDPM:
    """fit(train, meta) then sample(rows, seed, conditions); save and load a folder."""

    name = "tabddpm"

    def __init__(self, params: TabDDPMParams):
        self.params = params
        self.device = _device(params.device)
        self.encoder: TableEncoder | None = None
        self.denoiser: MLPDenoiser | None = None
        self.diffusion: GaussianMultinomialDiffusion | None = None
        self.losses: list[float] = []

    def _build(self, encoder: TableEncoder) -> None:
        p = self.params
        self.encoder = encoder
        d_in = len(encoder.numerical) + sum(encoder.num_classes)
        self.denoiser = MLPDenoiser(d_in, len(encoder.classes), p.layers, p.dim_t, p.dropout).to(self.device)
        self.diffusion = GaussianMultinomialDiffusion(len(encoder.numerical), encoder.num_classes, p.num_timesteps)
        self.diffusion.to(self.device)

    def fit(self, train: pd.DataFrame, meta: TableMeta, constraints: list, seed: int) -> None:
        """Train on the learned columns of `train`. Constraints are met at sampling (rejection)."""
        p = self.params
        torch.manual_seed(seed)
        self._build(TableEncoder.fit(train, meta, p.conditional))
        data = _to(self.encoder.encode(train), self.device)
        g = torch.Generator(self.device).manual_seed(seed)
        ema = copy.deepcopy(self.denoiser).requires_grad_(False)
        opt = torch.optim.AdamW(self.denoiser.parameters(), lr=p.lr, weight_decay=p.weight_decay, fused=True)
        self.denoiser.train()
        steps = self.training_steps(len(train))
        for step in range(steps):
            rows = torch.randint(0, len(train), (p.batch_size,), generator=g, device=self.device)
            loss = self.diffusion.loss(self.denoiser, _rows(data, rows), g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for group in opt.param_groups:
                group["lr"] = p.lr * (1 - (step + 1) / steps)
            _ema_update(ema, self.denoiser, min(p.ema_decay, (1 + step) / (10 + step)))
            if step % 100 == 0:
                self.losses.append(loss.item())
        self.denoiser = ema.eval()

    def training_steps(self, rows: int) -> int:
        """`steps`, or as many as `epochs` passes over `rows` take, within [100, 1000].

        Measured on penguins (275 training rows): at 3,000 steps (~2,800 passes) the synthetic rows'
        median distance to the closest training row fell to 0.017, against 0.027 for real holdout
        rows, at 1,000 to 0.021, at 300 it was 0.025-0.028, quality the same (0.90-0.93): a small
        table is memorised long before quality stops improving. 200 passes kept the median above
        the holdout's on the four small bench tables (README). Big tables keep the 1,000 steps.
        """
        p = self.params
        return p.steps or int(np.clip(math.ceil(p.epochs * rows / p.batch_size), 100, 1000))

    def sample(self, num_rows: int, seed: int, conditions: dict[str, Any] | None = None) -> pd.DataFrame:
        """`num_rows` rows of the learned columns; `conditions` fixes some columns' values."""
        if self.encoder is None:
            raise RuntimeError("TabDDPM.sample before fit or load")
        enc, conditions = self.encoder, conditions or {}
        g = torch.Generator(self.device).manual_seed(seed)
        y = self._labels(num_rows, conditions, g)
        fixed = self._fixed(conditions)
        self.denoiser.eval()
        p = self.params
        out = self.diffusion.sample(self.denoiser, y, fixed, num_rows, g, p.sample_steps, p.sample_eta)
        frame = enc.decode(out)
        for column, value in conditions.items():
            frame[column] = value
        return frame

    def _labels(self, rows: int, conditions: dict[str, Any], g: torch.Generator) -> torch.Tensor | None:
        enc = self.encoder
        if not enc.label:
            return None
        if enc.label in conditions:
            index = _category_index(enc.label, conditions[enc.label], enc.classes)
            return torch.full((rows,), index, dtype=torch.long, device=self.device)
        weights = torch.tensor(enc.class_counts, dtype=torch.float, device=self.device)
        return torch.multinomial(weights, rows, replacement=True, generator=g)

    def _fixed(self, conditions: dict[str, Any]) -> Fixed:
        enc, fixed = self.encoder, Fixed([], [])
        for column, value in conditions.items():
            if column in enc.numerical:
                j = enc.numerical.index(column)
                number = float(pd.Timestamp(value).value if column in enc.datetimes else value)
                fixed.num.append((j, float(enc.quantiles[j].transform(np.array([number]))[0])))
                if column + NULL_SUFFIX in enc.categorical:
                    flag = enc.categorical.index(column + NULL_SUFFIX)
                    fixed.cat.append((flag, enc.categories[flag].index(False)))
            elif column in enc.categorical:
                j = enc.categorical.index(column)
                fixed.cat.append((j, _category_index(column, value, enc.categories[j])))
        return fixed

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        state = {"params": self.params.model_dump(mode="json"), "encoder": self.encoder.state,
                 "denoiser": self.denoiser.state_dict(), "losses": self.losses}  # fmt: skip
        torch.save(state, folder / "tabddpm.pt")

    @classmethod
    def load(cls, folder: Path) -> TabDDPM:
        state = torch.load(folder / "tabddpm.pt", map_location="cpu", weights_only=True)
        model = cls(TabDDPMParams.model_validate(state["params"]))
        model._build(TableEncoder(state["encoder"]))
        model.denoiser.load_state_dict(state["denoiser"])
        model.losses = state["losses"]
        return model


def _category_index(column: str, value: Any, categories: list) -> int:
    for i, category in enumerate(categories):
        if category == _plain(value):
            return i
    seen = ", ".join(map(repr, categories[:20]))
    raise SpecError(f"condition {column}={value!r}: the training data has no such value (it has: {seen})")


def _device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise SpecError("tabddpm: device: cuda was asked for but CUDA is not available here")
    return torch.device("cuda" if choice != "cpu" and torch.cuda.is_available() else "cpu")


def _to(enc: Encoded, device: torch.device) -> Encoded:
    return Encoded(enc.x_num.to(device), enc.x_cat.to(device), None if enc.y is None else enc.y.to(device))


def _rows(enc: Encoded, rows: torch.Tensor) -> Encoded:
    return Encoded(enc.x_num[rows], enc.x_cat[rows], None if enc.y is None else enc.y[rows])


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 - decay)·model; the caller warms the decay up from 0.1."""
    for target, source in zip(ema.parameters(), model.parameters()):
        target.mul_(decay).add_(source, alpha=1 - decay)
