"""Tabular data: fit a synthesizer on a real table, sample rows with conditions and constraints, report.

- `data`: the real table (CSV, Parquet or a scikit-learn set), its metadata, the holdout split,
  the user's types.
- `tabddpm`: TabDDPM (Kotelnikov et al., 2023), written here in PyTorch.
- `synthesizers`: fit / sample / save / load over TabDDPM and SDV's GaussianCopula, CTGAN, TVAE.
- `constraints`: range, inequality, allowed combinations, uniqueness; the rejection loop.
- `evaluate`: SDMetrics quality, TSTR utility, DCR privacy, and their plots.
- Stages: `source` registers `tabular_synth` (the record schema is in its docstring), `report`
  registers `tabular_report`.
"""
