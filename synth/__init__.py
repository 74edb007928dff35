"""synth: synthetic training data pipelines on Ray, written to Parquet.

The core every generator and filter leans on: specs (`synth.spec`), the stage protocol and
registry (`synth.stage`, `synth.registry`), the Ray runner (`synth.runner`), Parquet IO and
provenance (`synth.io`, `synth.manifest`, `synth.card`), LLM clients (`synth.llm`) and the CLI.
"""

__version__ = "0.1.0"
