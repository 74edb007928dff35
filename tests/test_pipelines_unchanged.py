"""Every shipped pipeline, shrunk, writes the same Parquet data as when the golden file was recorded.

The guard for refactors of the runner and the stages (issue 16): each spec in `pipelines/` is run
at tiny sizes with its own seed, and a canonical digest of the rows it wrote under OUTPUT/data
(read with pyarrow: schema, then every row in file order, each value in a stable text form) must
equal the one in `tests/data/pipeline_digests.json`. A change that alters any record, its order or
its type fails here.

`train_instruct.yaml` is a training spec (a checkpoint, not a Parquet dataset) and is left out.
No real model runs here. The instruct pipeline's LLM is a scripted OpenAI-style server on loopback
(`ScriptedServer`: each answer a function of the prompt alone), because the embedded model needs
more than 4 minutes for even two Self-Instruct rounds on the shared 2 cores, and its text is not
what this test guards (the engines have their own tests). The code pipeline runs with `llm: null`
(inputs from doctests and hypothesis draws).

`run_id` holds the spec's fingerprint, which covers the absolute paths of the files a spec names
(the instruct seed file), so it differs between checkouts: the digest takes it as `<run_id>` and
the test checks it separately against the spec.

Pipelines whose data comes from torch's floating-point kernels (tabular, image) are compared
only on a CPU of the instruction-set level torch dispatched to and of the vendor they were recorded
on (`_cpu` in the golden file: `torch.backends.cpu.get_cpu_capability()` and `vendor_id`): AVX2 and
AVX-512 kernels, and MKL's paths for Intel and AMD, may sum in another order and round
differently, which would fail this test with no change of ours.

One provenance column differs from the recorded data by design: the `generator` of the image
pipelines' records. It names the stage kind that made a record, and their images come from the
one `diffusion` stage that fits and samples since issue 16 merged the `diffusion_train` and
`diffusion_sample` stages; when the image digests were recorded (before that merge) it read
`diffusion_sample`. `RENAMED` maps the new value back to the recorded one before hashing, and the
test checks that no record holds the recorded name itself, so the mapping is one to one: every
other column (the model id, seeds and pixels included) must equal the recorded data exactly.

To record the digests again after an intended change of the data (say why in the commit):

    PYTHONPATH=. python tests/test_pipelines_unchanged.py --record
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from synth.run_spec import load_spec

REPO = Path(__file__).resolve().parents[1]
PIPELINES = REPO / "pipelines"
GOLDEN = Path(__file__).parent / "data" / "pipeline_digests.json"
TORCH_MADE = {"image.yaml", "image_gpu.yaml", "tabular.yaml", "tabular_ctgan.yaml"}  # data from torch's float kernels


def cpu_capability() -> str:
    """torch's kernel level and the CPU's vendor: MKL and oneDNN take other code paths on AMD than
    on Intel at the same level (an AVX-512 AMD EPYC wrote other tabular and image data)."""
    import platform

    import torch

    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    vendors = [line.split(":", 1)[1].strip() for line in lines if line.startswith("vendor_id")]
    vendor = vendors[0] if vendors else platform.processor()
    return f"{torch.backends.cpu.get_cpu_capability()} {vendor}"

SHRINK: dict[str, dict[str, dict]] = {
    # pipeline file -> stage kind -> fields replaced (sizes, steps, resources for 2 CPUs); in the
    # sections named in MERGED only the keys given are replaced
    "code.yaml": {
        "code_functions": {"max_functions": 6},
        "code_inputs": {"llm": None, "inputs_per_function": 3, "candidates_per_function": 6,
                        "resources": {"num_cpus": 0.5, "batch_size": 4}},
        "code_coverage": {"inputs_per_function": 3},
    },
    "image.yaml": {
        "phantom_images": {"count": 24, "images_per_block": 8},
        "diffusion": {"train": {"steps": 3, "batch_size": 4, "channels": [8, 16, 16], "checkpoint_every": 2,
                                "warmup_steps": 1},
                      "sample": {"images_per_class": 2, "steps": 2, "block_size": 2},
                      "resources": {"num_cpus": 1}},
        "image_eval": {"fid_images": 4, "classifier_steps": 2, "inception": False, "resources": {"num_cpus": 1}},
    },
    "image_gpu.yaml": {
        "phantom_images": {"count": 24, "size": 16, "images_per_block": 8},
        "diffusion": {"train": {"steps": 3, "batch_size": 4, "channels": [8, 8, 16, 16], "checkpoint_every": 2,
                                "warmup_steps": 1, "log_every": 1},
                      "sample": {"images_per_class": 2, "steps": 2, "block_size": 3},
                      "resources": {"num_cpus": 1}},
        "image_memorisation": {"compare_size": 16},
        "image_eval": {"fid_images": 4, "classifier_steps": 2, "inception": False, "resources": {"num_cpus": 1}},
    },
    "instruct.yaml": {
        "self_instruct": {"num_instructions": 6, "prompts_per_round": 2, "max_rounds": 3, "new_tasks_per_prompt": 3},
        "verdict_filter": {"resources": {"num_cpus": 0.5, "batch_size": 8}},
    },
    "tabular.yaml": {
        "tabular_synth": {"synthesizer": {"model": "tabddpm", "steps": 20}, "num_rows": 60, "block_rows": 20},
    },
    "tabular_ctgan.yaml": {
        "tabular_synth": {"synthesizer": {"model": "ctgan", "epochs": 2}, "num_rows": 60, "block_rows": 20},
    },
}
MERGED = {"train", "sample"}  # the diffusion stage's sections: the shipped learning rate, guidance... stay
NOT_DATA = {"train_instruct.yaml"}
RENAMED = {
    # pipeline file -> column -> {value written now: value in its recorded digest} (see the docstring);
    # a pipeline whose digest is recorded again may drop its entry
    "image.yaml": {"generator": {"diffusion": "diffusion_sample"}},
    "image_gpu.yaml": {"generator": {"diffusion": "diffusion_sample"}},
}


def shrunk_spec(name: str, folder: Path, llm_url: str) -> Path:
    """The pipeline with SHRINK's fields replaced, written to `folder` (its input paths absolute)."""
    tree = yaml.safe_load((PIPELINES / name).read_text())
    if "llm" in tree:
        tree["llm"] = {"default": {"backend": "openai", "base_url": llm_url, "model": "scripted"}}
    for stage in tree["stages"]:
        for key, value in SHRINK[name].get(stage["kind"], {}).items():
            stage[key] = {**stage[key], **value} if key in MERGED and key in stage else value
        for key, value in stage.items():
            if isinstance(value, str) and (PIPELINES / value).exists():
                stage[key] = str(PIPELINES / value)
    tree["output"] = str(folder / "out")
    tree.pop("ray", None)  # the tests' shared Ray session
    path = folder / name
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


class ScriptedServer:
    """An OpenAI-style chat server on loopback whose answer depends on the prompt alone.

    Shaped like a helpful model's answers to the instruct pipeline's prompts (task lists, Yes/No,
    instances, the judge's yes/no verdicts), with words drawn from a hash of the prompt so that records
    differ and dedup has little to do."""

    WORDS = ("river", "matrix", "garden", "protein", "ledger", "comet", "violin", "harbor", "glacier", "pixel",
             "falcon", "quartz", "meadow", "engine", "lantern", "orbit", "cactus", "tunnel", "saddle", "beacon")

    def __enter__(self) -> ScriptedServer:
        handler = self._handler()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()

    @classmethod
    def words(cls, text: str, n: int) -> list[str]:
        digest = hashlib.sha256(text.encode()).digest()
        return [cls.WORDS[b % len(cls.WORDS)] + str(b) for b in digest[:n]]

    @classmethod
    def reply(cls, prompt: str) -> str:
        w = cls.words(prompt, 12)
        if prompt.startswith("Here are"):
            first, last = map(int, re.search(r"numbered (\d+) to (\d+)", prompt).groups())
            shapes = ("Explain how {} relates to {}.", "Classify the {} {} as good or bad.",
                      "Write a short poem about {} and {}.")
            return "\n".join(f"{n}. " + shapes[n % 3].format(*cls.words(f"{prompt}/{n}", 2))
                             for n in range(first, last + 1))
        if prompt.rstrip().endswith(("Sensible:", "Correct:")):  # the judge of verdict_filter, judge_report
            return "no" if prompt.rstrip().endswith("Correct:") and w[0].startswith(("river", "matrix")) else "yes"
        task = prompt.rsplit("Task:", 1)[-1].strip()
        if "Answer Yes or No" in prompt:
            return "Yes" if task.startswith("Classify") else "No"
        if task.startswith("Classify"):
            return f"Class label: good\nInput: a {w[0]} near the {w[1]}\n\nClass label: bad\nInput: a {w[2]} {w[3]}"
        if task.startswith(("Explain", "Write")):
            return (f"Input: {w[0]} {w[1]}\nOutput: The {w[0]} is like a {w[1]} because both of them "
                    f"turn {w[2]} into {w[3]} over time.")
        return (f"Here is a careful answer. First, the {w[0]} meets the {w[1]}. Then the {w[2]} "
                f"changes the {w[3]} and the {w[4]}, so the result is {w[5]}.")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        reply = self.reply

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._send({"object": "list", "data": [{"id": "scripted", "object": "model"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                text = reply(body["messages"][-1]["content"])
                self._send({"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                         "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": 10, "completion_tokens": len(text.split())}})

            def _send(self, data: dict) -> None:
                payload = json.dumps(data).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        return Handler


@pytest.fixture(scope="module")
def scripted_llm():
    with ScriptedServer() as server:
        yield server.base_url


def canonical_value(value: object) -> object:
    """A JSON-safe, exact form: bytes as their sha256, floats by repr (nan and -0.0 kept apart)."""
    if isinstance(value, bytes):
        return "bytes:" + hashlib.sha256(value).hexdigest()
    if isinstance(value, float):
        return "float:" + (repr(value) if not math.isnan(value) else "nan")
    if isinstance(value, dict):
        return {k: canonical_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [canonical_value(v) for v in value]
    return value


def data_digest(data_dir: Path, renamed: dict[str, dict[str, str]] | None = None) -> dict:
    """Rows, columns and a sha256 over the schema and every row of OUTPUT/data in file order, with
    the values `renamed` names (column -> {now: recorded}) hashed as recorded."""
    files = sorted(data_dir.glob("*.parquet"))
    table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")
    renamed = renamed or {}
    for column, names in renamed.items():
        clash = set(table.column(column).to_pylist()) & set(names.values())
        assert not clash, f"{column} holds {sorted(clash)} itself: renaming to it would hide a change"
    schema = [f"{field.name}: {field.type}" for field in table.schema]
    digest = hashlib.sha256(json.dumps(schema).encode())
    for row in table.to_pylist():
        if "run_id" in row:
            row["run_id"] = "<run_id>"
        for column, names in renamed.items():
            row[column] = names.get(row[column], row[column])
        digest.update(json.dumps(canonical_value(row), sort_keys=True).encode() + b"\n")
    return {"rows": table.num_rows, "columns": schema, "sha256": digest.hexdigest()}


def run_pipeline(name: str, folder: Path, llm_url: str) -> dict:
    from synth.runner import run

    spec = load_spec(shrunk_spec(name, folder, llm_url))
    result = run(spec)
    run_ids = set(pq.read_table(result.output / "data", columns=["run_id"]).column(0).to_pylist())
    assert run_ids == {result.manifest.run_id} and result.manifest.run_id.startswith(f"{spec.name}-")
    return data_digest(result.output / "data", RENAMED.get(name))


def test_every_pipeline_is_covered():
    shipped = {p.name for p in PIPELINES.glob("*.yaml")}
    assert shipped - NOT_DATA == set(SHRINK), "add the new pipeline to SHRINK and record its digest"
    assert set(json.loads(GOLDEN.read_text())) - {"_cpu"} == set(SHRINK)
    assert set(RENAMED) <= set(SHRINK)


def test_a_renamed_value_hashes_as_recorded_and_the_recorded_name_itself_is_refused(tmp_path):
    def digest(generator: str, renamed: dict | None) -> str:
        folder = tmp_path / generator
        folder.mkdir(exist_ok=True)
        pq.write_table(pa.table({"generator": [generator], "seed": [7]}), folder / "part-000000.parquet")
        return data_digest(folder, renamed)["sha256"]

    names = {"generator": {"diffusion": "diffusion_sample"}}
    assert digest("diffusion", names) == digest("diffusion_sample", None) != digest("diffusion", None)
    with pytest.raises(AssertionError, match="would hide a change"):
        digest("diffusion_sample", names)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SHRINK))
def test_pipeline_writes_the_recorded_data(ray_session, scripted_llm, tmp_path, name):
    golden = json.loads(GOLDEN.read_text())
    if name in TORCH_MADE and golden["_cpu"] != (here := cpu_capability()):
        pytest.skip(f"{name}'s digest was recorded with torch's {golden['_cpu']} kernels; "
                    f"this CPU runs {here}, whose float sums may round differently")
    expected = golden[name]
    got = run_pipeline(name, tmp_path, scripted_llm)
    assert got["columns"] == expected["columns"]
    assert got["rows"] == expected["rows"]
    assert got["sha256"] == expected["sha256"]


def _record(names: list[str]) -> None:
    """Run the named pipelines (default: all) and write their digests into the golden file."""
    import os
    import tempfile

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, object_store_memory=300 * 1024**2, include_dashboard=False)
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if not names or TORCH_MADE & set(names):  # the kernels only matter to torch-made data
        golden["_cpu"] = cpu_capability()
    with ScriptedServer() as server:
        for name in names or sorted(SHRINK):
            with tempfile.TemporaryDirectory() as folder:
                golden[name] = run_pipeline(name, Path(folder), server.base_url)
            print(name, golden[name]["rows"], golden[name]["sha256"], flush=True)
            GOLDEN.write_text(json.dumps(dict(sorted(golden.items())), indent=1) + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] != ["--record"]:
        sys.exit("usage: python tests/test_pipelines_unchanged.py --record [PIPELINE.yaml ...]")
    _record(sys.argv[2:])
