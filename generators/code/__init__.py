"""Code data, Case2Code style: functions from real source, run on inputs in a sandbox, made into prompts.

The stages, in pipeline order (`pipelines/code.yaml`):
`code_functions` (corpus.py) -> `code_inputs` (inputs.py) -> `code_execute` (execute.py, in
`synth.sandbox`) -> `code_checks`, `code_determinism` (filters/quality/code_checks.py) ->
`case2code` (prompts.py). The record schema is `generators.code.records.CODE_SCHEMA`.
"""
