"""synth: synthetic training data pipelines on Ray, written to Parquet.

The core every generator and filter leans on: specs (`synth.spec`), the stage protocol and
registry (`synth.stage`, `synth.registry`), the Ray runner (`synth.runner`), Parquet IO and
provenance (`synth.io`, `synth.manifest`, `synth.card`), LLM clients (`synth.llm`) and the CLI.
"""

import os

# torch's OpenMP threads spin at every barrier by default. When another process holds a core,
# a spinning thread waits for a descheduled sibling at each of the thousands of barriers of a
# forward: on a loaded 2-core machine the embedded model's Self-Instruct task step took 818 s
# with 2 spinning threads, 139 s with waiting threads and 112 s with one thread. Waiting costs
# where the other work is niced: 51.6 s against 43.6 s (libgomp's default) for a smaller step.
# Set before any module imports torch (Ray workers import synth first too); a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
