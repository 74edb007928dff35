"""`tabular_report`: fidelity, ML utility and privacy of a `tabular_synth` stage's rows, for the card.

A global stage: it passes its input through unchanged and, on the driver, compares the first
`max_rows` synthetic rows (gathered there on purpose: the metrics need them together) with the
real table's training split and holdout, re-read from the source stage's `fit.json` (the same
file and the same holdout rows the fit used; no real row is copied into the output folder).

It writes `OUTPUT/_reports/<stage>/`: `report.md` (a card section), `report.json` (the numbers)
and PNG plots. The markdown links its images by bare name (they sit beside it); the dataset card
(`synth.card`) prefixes the report's folder when it includes the section.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import pyarrow as pa
from pydantic import Field

from generators.tabular.data import TableMeta, TableSource, load_table, to_frame
from generators.tabular.evaluate import Evaluation, evaluate, plot_all
from generators.tabular.guard import LABEL as GUARD_LABEL
from generators.tabular.source import model_folder, rejection_rates
from synth import io
from synth.errors import SynthError
from synth.registry import register
from synth.spec import StageConfig
from synth.stage import TableStage

log = logging.getLogger(__name__)


class TabularReportConfig(StageConfig):
    kind: Literal["tabular_report"] = "tabular_report"
    source: str = Field("tabular_synth", description="Name of the tabular_synth stage whose rows and model to judge")
    max_rows: int = Field(20_000, ge=1, description="Synthetic rows compared (the first ones)")
    attacks: int = Field(500, ge=0, description="anonymeter attacks of each kind (at most the holdout's rows); 0: none")
    plots: bool = True


@register
class TabularReport(TableStage):
    kind = "tabular_report"
    Config = TabularReportConfig
    description = "SDMetrics quality, TSTR utility, DCR, NNDR and anonymeter privacy risks of synthetic tables, with plots"

    def transform(self, table: pa.Table) -> pa.Table:
        """Compares whole tables: one task with every synthetic row; the rows pass through."""
        cfg, ctx = self.config, self.ctx
        fit_file = model_folder(ctx, cfg.source) / "fit.json"
        if not fit_file.exists():
            raise SynthError(f"stage {ctx.stage_name!r}: no fitted model at {fit_file}; `source` must name a "
                             "tabular_synth stage that runs before this one")  # fmt: skip
        fit = io.read_json(fit_file)
        meta = TableMeta.model_validate(fit["metadata"])
        real = to_frame(load_table(TableSource.model_validate(fit["data"])))
        holdout_rows = set(fit["holdout_rows"])
        train = real.iloc[[i for i in range(len(real)) if i not in holdout_rows]].reset_index(drop=True)
        holdout = real.iloc[sorted(holdout_rows)].reset_index(drop=True)
        log.info("tabular_report: comparing up to %d synthetic rows with %d real training and %d holdout rows",
                 cfg.max_rows, len(train), len(holdout))  # fmt: skip
        synthetic = to_frame(table.slice(0, cfg.max_rows))
        evaluation = evaluate(train, holdout, synthetic, meta, seed=ctx.seed, attacks=cfg.attacks)
        self._write(evaluation, train, synthetic, meta, fit)
        return table

    def _write(self, evaluation: Evaluation, train, synthetic, meta: TableMeta, fit: dict) -> None:
        ctx = self.ctx
        target = ctx.output_dir / "_reports" / ctx.stage_name
        io.remove_temp_siblings(target)
        tmp = io.temp_sibling(target)
        tmp.mkdir(parents=True)
        plots = plot_all(evaluation, train, synthetic, meta, tmp) if self.config.plots else []
        sampling_file = model_folder(ctx, self.config.source) / "sampling.json"
        sampling = io.read_json(sampling_file) if sampling_file.exists() else None
        summary = evaluation.summary() | {"sampling": sampling, "fit": _fit_facts(fit, len(synthetic))}
        io.write_json_atomic(tmp / "report.json", summary)
        (tmp / "report.md").write_text(render(ctx.stage_name, summary, meta, plots))
        io.commit_dir(tmp, target)


def _fit_facts(fit: dict, rows: int) -> dict:
    return {"model": fit["model"], "source": TableSource.model_validate(fit["data"]).describe(),
            "train_rows": fit["train_rows"], "holdout_rows": len(fit["holdout_rows"]),
            "fit_seconds": fit["fit_seconds"], "synthetic_rows": rows}  # fmt: skip


def render(stage: str, summary: dict, meta: TableMeta, plots: list[str]) -> str:
    """The report as a markdown section of the dataset card."""
    fit, quality = summary["fit"], summary["quality"]
    lines = [
        f"## Tabular report: `{stage}`",
        "",
        f"{fit['synthetic_rows']} synthetic rows from `{fit['model']}` (fitted in {fit['fit_seconds']:.1f} s on "
        f"{fit['train_rows']} real training rows of `{fit['source']}`), compared with those rows and with "
        f"{fit['holdout_rows']} real holdout rows the fit never saw (split from the seed before fitting).",
        "",
        "| fidelity (SDMetrics quality report) | score |",
        "|---|---|",
        f"| overall quality | {quality['score']:.3f} |",
        f"| column shapes | {quality['column_shapes']:.3f} |",
        f"| column pair trends | {quality['column_pair_trends']:.3f} |",
        "",
        *_utility_lines(summary["utility"], meta),
        *_privacy_lines(summary["privacy"]),
        *_attack_lines(summary.get("attacks")),
        *_sampling_lines(summary["sampling"]),
        *[f"![{Path(p).stem.replace('_', ' ')}]({p})" for p in plots],
        "",
    ]
    return "\n".join(lines)


def _utility_lines(utility: dict | None, meta: TableMeta) -> list[str]:
    if utility is None:
        return ["ML utility: not measured (no target column or no holdout).", ""]
    name = "macro F1" if utility["metric"] == "macro_f1" else "R²"
    return [
        f"ML utility: a gradient-boosted model predicting `{meta.target}`, scored by {name} on the real holdout.",
        "",
        "| trained on | score |",
        "|---|---|",
        f"| synthetic rows (TSTR) | {utility['tstr']:.3f} |",
        f"| real training rows (TRTR) | {utility['trtr']:.3f} |",
        "",
    ]


def _privacy_lines(privacy: dict) -> list[str]:
    lines = [
        "Privacy: distance to the closest real training record (DCR, Gower; 0 = an exact copy) and the nearest "
        "one's distance over the second nearest's (NNDR; near 0 = sitting on one training row).",
        "",
        "| | median DCR | median NNDR | exact copies |",
        "|---|---|---|---|",
        f"| synthetic rows | {privacy['dcr_median']:.4f} | {privacy['nndr_median']:.3f} "
        f"| {100 * privacy['exact_copy_rate']:.2f}% |",
    ]
    if "holdout_dcr_median" in privacy:
        lines += [
            f"| real holdout rows (baseline) | {privacy['holdout_dcr_median']:.4f} "
            f"| {privacy['holdout_nndr_median']:.3f} | {100 * privacy['holdout_exact_copy_rate']:.2f}% |",
            "",
            f"{100 * privacy['closer_than_holdout_p5']:.1f}% of synthetic rows are nearer a training row than 95% "
            "of real holdout rows are (about 5% is what fresh real data gives).",
        ]
        if privacy["dcr_median"] < privacy["holdout_dcr_median"]:
            lines += [
                "",
                f"**Warning: synthetic rows sit closer to the training rows than the real holdout rows do** (median "
                f"DCR {privacy['dcr_median']:.4f} against {privacy['holdout_dcr_median']:.4f}): the model may have "
                "memorised training rows. Check the attack risks below before sharing this data.",
            ]
    return lines + [""]


def _attack_lines(attacks: dict | None) -> list[str]:
    if not attacks:
        return ["Attack risks: not measured (no holdout to measure them against, or `attacks: 0`).", ""]
    what = {
        "singling_out": "singling out (a predicate true of exactly one training row)",
        "linkability": "linkability (joining two halves of a training row through synthetic rows)",
        "inference": f"inference (guessing `{attacks['inference'].get('secret')}` from the other columns)",
    }
    lines = [
        "Attack risks (anonymeter; 0 = the attack learns no more about training rows than about holdout rows, "
        "1 = it succeeds on every training row), with 95% confidence intervals:",
        "",
        "| attack | risk | 95% CI | attacks |",
        "|---|---|---|---|",
    ]
    for kind, text in what.items():
        result = attacks[kind]
        if result["risk"] is None:
            lines.append(f"| {text} | not measured: {result['note']} | | {result['attacks']} |")
        else:
            low, high = result["ci"]
            lines.append(f"| {text} | {result['risk']:.3f} | {low:.3f} to {high:.3f} | {result['attacks']} |")
    return lines + [""]


def _sampling_lines(sampling: dict | None) -> list[str]:
    if not sampling:
        return []
    lines = []
    if sampling["conditions"]:
        fixed = ", ".join(f"{column}={value!r}" for column, value in sampling["conditions"].items())
        lines += [f"Sampled with fixed values ({fixed}): fidelity and utility compare these rows with real rows "
                  "of every value, so they score lower than unconditioned rows would.", ""]  # fmt: skip
    # Rates from the counts, so a sampling.json written before the rates were split still renders.
    near_copies = sampling["rejected"].get(GUARD_LABEL, 0)
    rates = rejection_rates(sampling["sampled"], sampling["rejected"])
    if sampling["constraints"]:
        each = ", ".join(f"{label}: {sampling['rejected'].get(label, 0)}" for label in sampling["constraints"])
        lines += [f"Constraints: of {sampling['sampled'] - near_copies} sampled rows checked (those the privacy "
                  f"guard passed), {100 * rates['constraint_rejection_rate']:.1f}% were rejected and resampled "
                  f"(by constraint: {each}).", ""]  # fmt: skip
    if sampling.get("privacy_guard") is not None:
        quantile = sampling["privacy_guard"]
        rule = "an exact copy of a training row" + (
            f", or nearer its closest training row (Gower) than {100 * (1 - quantile):.0f}% of real training rows "
            "are to their closest other one" if quantile > 0 else "")  # fmt: skip
        lines += [f"Privacy guard: {near_copies} of {sampling['sampled']} sampled rows "
                  f"({100 * rates['near_copy_rate']:.1f}%) were rejected and replaced as near copies ({rule}).", ""]  # fmt: skip
    return lines
