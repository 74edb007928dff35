"""Airflow DAGs for every synth spec in the repo's `pipelines/` (or $SYNTH_PIPELINES_DIR), one per file.

`synth_dag_factory` builds them; a spec that cannot become a DAG is listed among Airflow's import
errors of this file, naming the spec file and key, and the other DAGs still load.
"""

from synth_dag_factory import build_dags, pipelines_dir

globals().update({dag.dag_id: dag for dag in build_dags(pipelines_dir())})
