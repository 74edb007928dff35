"""How Airflow schedules and retries a spec's DAG (`airflow:` in pipeline and training specs)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AirflowOptions(BaseModel):
    """Read by `airflow_dags/`; the CLI ignores it, and it never changes what a run makes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schedule: str | None = Field(
        None, description="Cron expression or preset (@daily). Pipelines default to manual runs; "
        "training DAGs default to running when their dataset is written")
    retries: int = Field(2, ge=0, description="Tries after the first; a retry resumes after the last finished stage")
    retry_delay_s: float = Field(60.0, ge=0, description="Seconds between tries")
