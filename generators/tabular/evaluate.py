"""How good and how private synthetic rows are, against the real training split and a real holdout.

- **Fidelity**: SDMetrics' quality report: column shapes (each column's distribution against the
  real one) and column pair trends (each pair's correlation or contingency), and their mean.
- **ML utility, TSTR**: a gradient-boosted model trained on the synthetic rows and tested on the
  real holdout, beside the same model trained on the real training split (TRTR). Macro F1 for a
  categorical target, R² for a numerical one.
- **Privacy**: distance to closest record (DCR): for each synthetic row, the Gower distance to
  the nearest real training row (numerical columns scaled by their training range, categorical
  ones 0 when equal and 1 when not, averaged over columns). Its baseline is the same distance from
  the real holdout rows, which the model never saw: synthetic rows much closer to the training
  rows than fresh real rows are memorised ones. The exact-copy rate is the share at distance 0.
  Nearest-neighbour distance ratio (NNDR): the nearest training row's distance over the second
  nearest's, near 0 for a row that sits on one training row, beside the holdout's. And attacks,
  with anonymeter (Giomi et al., 2023): singling out (predicates true of one training row),
  linkability (joining two halves of a training row through the synthetic rows) and inference
  (guessing the target from the other columns), each a risk with its 95% confidence interval,
  measured against the same attack on the holdout so that what any data from the population
  would reveal does not count.

`evaluate` returns plain numbers (for a report or a bench) plus the per-column details and
distances the plots need; `plot_all` writes the PNGs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from generators.tabular.data import TableMeta


@dataclass
class Evaluation:
    """The numbers, and what the plots are drawn from."""

    quality: dict[str, float]
    utility: dict[str, float | str] | None
    privacy: dict[str, float]
    attacks: dict[str, dict] | None
    column_shapes: pd.DataFrame = field(repr=False)
    dcr_synthetic: np.ndarray = field(repr=False)
    dcr_holdout: np.ndarray | None = field(repr=False)

    def summary(self) -> dict:
        return {"quality": self.quality, "utility": self.utility, "privacy": self.privacy, "attacks": self.attacks}


def evaluate(train: pd.DataFrame, holdout: pd.DataFrame, synthetic: pd.DataFrame, meta: TableMeta,
             seed: int = 0, attacks: int = 500) -> Evaluation:  # fmt: skip
    """Fidelity, TSTR, DCR and NNDR of `synthetic` (learned columns compared; others ignored), and
    up to `attacks` anonymeter attacks of each kind (0: none)."""
    quality, shapes = quality_report(train, synthetic, meta)
    (dcr_synthetic, nndr_synthetic), holdout_distances = distances_to_closest_record(train, holdout, synthetic, meta)
    dcr_holdout, nndr_holdout = holdout_distances if holdout_distances else (None, None)
    return Evaluation(
        quality=quality,
        utility=ml_utility(train, holdout, synthetic, meta, seed),
        privacy=privacy_summary(dcr_synthetic, dcr_holdout) | nndr_summary(nndr_synthetic, nndr_holdout),
        attacks=attack_risks(train, holdout, synthetic, meta, attacks, seed) if attacks else None,
        column_shapes=shapes,
        dcr_synthetic=dcr_synthetic,
        dcr_holdout=dcr_holdout,
    )


# ---------------------------------------------------------------- fidelity


def quality_report(real: pd.DataFrame, synthetic: pd.DataFrame, meta: TableMeta) -> tuple[dict, pd.DataFrame]:
    """SDMetrics' single-table QualityReport (the score SDV reports):
    ({score, column_shapes, column_pair_trends}, per-column shapes)."""
    roles = meta.learned_roles()
    metadata = {"columns": {c: {"sdtype": role} for c, role in roles.items()}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated in favour of a multi-table report that scores differently
        from sdmetrics.reports.single_table import QualityReport

        report = QualityReport()
        report.generate(_comparable(real, roles), _comparable(synthetic, roles), metadata, verbose=False)
    properties = dict(zip(report.get_properties()["Property"], report.get_properties()["Score"]))
    scores = {
        "score": float(report.get_score()),
        "column_shapes": float(properties.get("Column Shapes", np.nan)),
        "column_pair_trends": float(properties.get("Column Pair Trends", np.nan)),
    }
    return scores, report.get_details("Column Shapes")


def _comparable(frame: pd.DataFrame, roles: dict[str, str]) -> pd.DataFrame:
    """Learned columns with one representation per role, whichever model made them."""
    out = {}
    for column, role in roles.items():
        values = frame[column]
        if role == "numerical":
            out[column] = pd.to_numeric(values, errors="coerce").astype(float)
        elif role == "datetime":
            out[column] = pd.to_datetime(values)
        else:
            out[column] = values.astype(object).where(values.notna(), None).map(lambda v: v if v is None else str(v))
    return pd.DataFrame(out)


# ---------------------------------------------------------------- ML utility


def ml_utility(train: pd.DataFrame, holdout: pd.DataFrame, synthetic: pd.DataFrame, meta: TableMeta,
               seed: int = 0) -> dict | None:  # fmt: skip
    """TSTR and TRTR on the real holdout; None without a target or a holdout."""
    if meta.task is None or holdout.empty:
        return None
    roles = meta.learned_roles()
    features = [c for c in roles if c != meta.target]
    frames = [_comparable(f, roles) for f in (synthetic, train, holdout)]
    categories = {c: sorted(pd.concat([f[c] for f in frames]).dropna().unique()) for c in features
                  if roles[c] in ("categorical", "boolean")}  # fmt: skip
    x_syn, x_train, x_test = (_features(f[features], categories) for f in frames)
    y_syn, y_train, y_test = (_target(f[meta.target], meta.task) for f in frames)
    metric = "macro_f1" if meta.task == "classification" else "r2"
    return {
        "metric": metric,
        "tstr": _fit_score(x_syn, y_syn, x_test, y_test, meta.task, seed),
        "trtr": _fit_score(x_train, y_train, x_test, y_test, meta.task, seed),
    }


def _features(frame: pd.DataFrame, categories: dict[str, list]) -> pd.DataFrame:
    out = {}
    for column in frame.columns:
        values = frame[column]
        if column in categories:
            out[column] = pd.Categorical(values, categories=categories[column])
        elif pd.api.types.is_datetime64_any_dtype(values):
            out[column] = values.astype("int64").where(values.notna()).astype(float)
        else:
            out[column] = values.astype(float)
    return pd.DataFrame(out)


def _target(values: pd.Series, task: str) -> np.ndarray:
    if task == "classification":
        return values.fillna("<null>").astype(str).to_numpy()
    return pd.to_numeric(values, errors="coerce").astype(float).to_numpy()


def _fit_score(x_fit, y_fit, x_test, y_test, task: str, seed: int) -> float:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.metrics import f1_score, r2_score

    keep = ~pd.isna(y_fit)
    if task == "classification":
        if len(set(y_fit)) < 2:
            return 0.0  # a single class predicts nothing
        model = HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=seed)
        model.fit(x_fit[keep], y_fit[keep])
        return float(f1_score(y_test, model.predict(x_test), average="macro", zero_division=0))
    model = HistGradientBoostingRegressor(categorical_features="from_dtype", random_state=seed)
    model.fit(x_fit[keep], y_fit[keep])
    test = ~np.isnan(y_test)
    return float(r2_score(y_test[test], model.predict(x_test[test])))


# ---------------------------------------------------------------- privacy


def distances_to_closest_record(train: pd.DataFrame, holdout: pd.DataFrame, synthetic: pd.DataFrame, meta: TableMeta):
    """((DCR, NNDR) of each synthetic row, (DCR, NNDR) of each holdout row or None without a holdout):
    the Gower distance to the nearest training row, and its ratio to the second nearest's."""
    index = GowerIndex(train, meta)

    def nearest(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        distances = index.distances(frame, min(2, len(train)))
        second = distances[:, -1]
        ratio = np.divide(distances[:, 0], second, out=np.ones(len(distances)), where=second > 0)
        return distances[:, 0], ratio

    return nearest(synthetic), (nearest(holdout) if not holdout.empty else None)


class GowerIndex:
    """Gower distances from any rows to their nearest training rows (also the privacy guard's)."""

    def __init__(self, train: pd.DataFrame, meta: TableMeta):
        from sklearn.neighbors import NearestNeighbors

        self.roles = meta.learned_roles()
        real = _comparable(train, self.roles)
        self.encode = _gower_encoder(real, self.roles)
        self.index = NearestNeighbors(metric="manhattan").fit(self.encode(real))

    def distances(self, frame: pd.DataFrame, k: int = 1) -> np.ndarray:
        """(rows, k): the distances to the k nearest training rows, nearest first."""
        distances, _ = self.index.kneighbors(self.encode(_comparable(frame, self.roles)), n_neighbors=k)
        return distances / len(self.roles)

    def nearest_other(self, train: pd.DataFrame) -> np.ndarray:
        """Each training row's distance to its nearest other training row (0 for a repeated row)."""
        return self.distances(train, 2)[:, 1] if len(train) > 1 else np.zeros(len(train))


def _gower_encoder(real: pd.DataFrame, roles: dict[str, str]):
    """A function frame -> matrix whose L1 distance, over the column count, is the Gower distance."""
    numeric = [c for c, r in roles.items() if r in ("numerical", "datetime")]
    categorical = [c for c in roles if c not in numeric]
    as_number = {c: _numbers(real[c]) for c in numeric}
    low = {c: np.nanmin(v) for c, v in as_number.items()}
    span = {c: (np.nanmax(v) - low[c]) or 1.0 for c, v in as_number.items()}
    fill = {c: np.nanmedian(v) for c, v in as_number.items()}
    levels = {c: sorted(real[c].dropna().unique()) for c in categorical}

    def encode(frame: pd.DataFrame) -> np.ndarray:
        parts = [((np.nan_to_num(_numbers(frame[c]), nan=fill[c]) - low[c]) / span[c])[:, None] for c in numeric]
        for c in categorical:
            values = frame[c].fillna("<null>").to_numpy()
            parts.append(0.5 * (values[:, None] == np.array(levels[c] + ["<null>"], dtype=object)[None]))
        return np.hstack(parts).astype(float)

    return encode


def _numbers(values: pd.Series) -> np.ndarray:
    if pd.api.types.is_datetime64_any_dtype(values):
        return np.where(values.isna(), np.nan, values.to_numpy("datetime64[ns]").astype("int64").astype(float))
    return values.astype(float).to_numpy()


def privacy_summary(dcr_synthetic: np.ndarray, dcr_holdout: np.ndarray | None) -> dict[str, float]:
    summary = {
        "dcr_median": float(np.median(dcr_synthetic)),
        "exact_copy_rate": float(np.mean(dcr_synthetic == 0)),
    }
    if dcr_holdout is not None:
        summary["holdout_dcr_median"] = float(np.median(dcr_holdout))
        summary["holdout_exact_copy_rate"] = float(np.mean(dcr_holdout == 0))
        # Share of synthetic rows nearer the training data than 95% of fresh real rows are.
        summary["closer_than_holdout_p5"] = float(np.mean(dcr_synthetic < np.quantile(dcr_holdout, 0.05)))
    return summary


def nndr_summary(nndr_synthetic: np.ndarray, nndr_holdout: np.ndarray | None) -> dict[str, float]:
    summary = {"nndr_median": float(np.median(nndr_synthetic))}
    if nndr_holdout is not None:
        summary["holdout_nndr_median"] = float(np.median(nndr_holdout))
    return summary


def attack_risks(train: pd.DataFrame, holdout: pd.DataFrame, synthetic: pd.DataFrame, meta: TableMeta,
                 attacks: int, seed: int) -> dict[str, dict] | None:  # fmt: skip
    """anonymeter's singling-out, linkability and inference risks, {kind: {risk, ci, attacks}};
    None without a holdout (the control every attack is measured against)."""
    roles = meta.learned_roles()
    if holdout.empty or len(roles) < 2:
        return None
    from anonymeter.evaluators import InferenceEvaluator, LinkabilityEvaluator, SinglingOutEvaluator

    ori, syn, control = (_attackable(f, roles) for f in (train, synthetic, holdout))
    n = max(1, min(attacks, len(control), len(ori)))
    columns = list(roles)
    secret = meta.target if meta.target in roles else columns[-1]
    aux = [c for c in columns if c != secret]
    half = len(columns) // 2
    evaluators = {
        "singling_out": lambda: SinglingOutEvaluator(ori, syn, n_attacks=n, control=control, max_attempts=50_000,
                                                     seed=seed).evaluate(mode="multivariate"),
        "linkability": lambda: LinkabilityEvaluator(ori, syn, aux_cols=(columns[:half], columns[half:]),
                                                    n_attacks=n, n_neighbors=10, control=control).evaluate(n_jobs=1),
        "inference": lambda: InferenceEvaluator(ori, syn, aux_cols=aux, secret=secret, n_attacks=n, control=control,
                                                regression=roles[secret] == "numerical").evaluate(n_jobs=1),
    }  # fmt: skip
    out = {}
    np.random.seed(seed % 2**32)  # linkability and inference draw their targets from NumPy's global RNG
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "attack is as good or worse than the baseline" and the like
        for kind, run in evaluators.items():
            try:
                risk = run().risk(confidence_level=0.95)
            except (RuntimeError, ValueError) as exc:  # e.g. no singling-out predicate found in the attempts
                out[kind] = {"risk": None, "ci": None, "attacks": n, "note": str(exc).splitlines()[0][:200]}
                continue
            out[kind] = {"risk": float(risk.value), "ci": [float(risk.ci[0]), float(risk.ci[1])], "attacks": n}
    out["inference"]["secret"] = secret
    return out


def _attackable(frame: pd.DataFrame, roles: dict[str, str]) -> pd.DataFrame:
    """What anonymeter compares: numbers as floats (datetimes as nanoseconds), the rest as text."""
    out = _comparable(frame, roles)
    for column, role in roles.items():
        if role == "datetime":
            out[column] = _numbers(out[column])
    return out.reset_index(drop=True)


# ---------------------------------------------------------------- plots


def plot_all(evaluation: Evaluation, real: pd.DataFrame, synthetic: pd.DataFrame, meta: TableMeta,
             folder: Path, max_columns: int = 12) -> list[str]:  # fmt: skip
    """Writes the PNGs into `folder`; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    folder.mkdir(parents=True, exist_ok=True)
    roles = meta.learned_roles()
    written = [
        _plot_column_shapes(evaluation.column_shapes, folder / "column_shapes.png"),
        _plot_distributions(
            _comparable(real, roles), _comparable(synthetic, roles), roles, folder / "distributions.png", max_columns
        ),  # fmt: skip
        _plot_correlations(_comparable(real, roles), _comparable(synthetic, roles), roles, folder / "correlations.png"),
        _plot_dcr(evaluation.dcr_synthetic, evaluation.dcr_holdout, folder / "dcr.png"),
    ]
    return [p.name for p in written if p is not None]


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _plot_column_shapes(shapes: pd.DataFrame, path: Path) -> Path:
    import matplotlib.pyplot as plt

    shapes = shapes.sort_values("Score")
    fig, ax = plt.subplots(figsize=(7, 0.25 * len(shapes) + 1.2))
    ax.barh(shapes["Column"].astype(str), shapes["Score"], color="#4c72b0")
    ax.set_xlim(0, 1)
    ax.set_xlabel("column shape score (1 = same distribution as the real column)")
    return _save(fig, path)


def _plot_distributions(real, synthetic, roles, path: Path, max_columns: int) -> Path:
    import matplotlib.pyplot as plt

    columns = list(roles)[:max_columns]
    cols = min(4, len(columns))
    rows = -(-len(columns) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, column in zip(axes.flat, columns):
        if roles[column] in ("numerical", "datetime"):
            values = [_numbers(f[column]) for f in (real, synthetic)]
            values = [v[~np.isnan(v)] for v in values]
            bins = np.histogram_bin_edges(np.concatenate(values), bins=30)
            for v, label in zip(values, ("real", "synthetic")):
                ax.hist(v, bins=bins, density=True, alpha=0.5, label=label)
        else:
            shares = pd.DataFrame({"real": real[column].value_counts(normalize=True),
                                   "synthetic": synthetic[column].value_counts(normalize=True)}).fillna(0)  # fmt: skip
            shares.head(15).plot.bar(ax=ax, legend=False, rot=45)
        ax.set_title(str(column)[:30], fontsize=9)
    for ax in list(axes.flat)[len(columns) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    return _save(fig, path)


def _plot_correlations(real, synthetic, roles, path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    numeric = [c for c, r in roles.items() if r == "numerical"]
    if len(numeric) < 2:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for ax, frame, title in zip(axes, (real, synthetic), ("real", "synthetic")):
        image = ax.imshow(frame[numeric].corr().to_numpy(), vmin=-1, vmax=1, cmap="coolwarm")
        ax.set_title(f"{title}: Pearson correlation")
        labels = [str(c)[:18] for c in numeric] if len(numeric) <= 12 else []
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
    fig.colorbar(image, ax=axes, shrink=0.8)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _plot_dcr(dcr_synthetic: np.ndarray, dcr_holdout: np.ndarray | None, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    samples = [(dcr_synthetic, "synthetic → train")]
    if dcr_holdout is not None:
        samples.append((dcr_holdout, "real holdout → train"))
    bins = np.histogram_bin_edges(np.concatenate([s for s, _ in samples]), bins=40)
    for values, label in samples:
        ax.hist(values, bins=bins, density=True, alpha=0.5, label=label)
    ax.set_xlabel("distance to closest training record (Gower)")
    ax.legend()
    return _save(fig, path)
