"""Airflow DAGs for every synth spec in the repo's `pipelines/` (or $SYNTH_PIPELINES_DIR), one per file.

`synth_dag_factory` builds them; a spec that cannot become a DAG is listed among Airflow's import
errors of this file, naming the spec file and key, and the other DAGs still load.
"""

try:
    from synth_dag_factory import build_dags, pipelines_dir  # as Airflow imports it: its folder on the path
except ModuleNotFoundError:  # `import airflow_dags.synth_pipelines` from the repo root
    from airflow_dags.synth_dag_factory import build_dags, pipelines_dir

globals().update({dag.dag_id: dag for dag in build_dags(pipelines_dir())})
