"""The Celery tasks of a job; each hands its message to the module that does the work.

Tasks stay thin: the job record (`jobstate.store`) says what to read and where the job
stands, `workers.geometry` does the work, and the results go back to the store and the
blob store. A task is idempotent: a message for a finished job does nothing, and a job
whose worker died is claimed again and finishes once.

- ``analyze_sets`` (`workers.single`): every job starts here; it claims the job and
  analyses it, or fans a large one out in row blocks;
- ``solve_block`` (`workers.sharded`): one row block of a sharded job;
- ``assemble_job`` (`workers.sharded`): joins a sharded job's blocks into its report.
"""

from __future__ import annotations

from celery import Task

from jobstate.dispatch import ANALYZE_SETS_TASK, ASSEMBLE_JOB_TASK, SOLVE_BLOCK_TASK
from workers.celery_app import app
from workers.job_task import JobTask
from workers.sharded import run_assembly, run_block
from workers.single import run_job


@app.task(name=ANALYZE_SETS_TASK, base=JobTask)
def analyze_sets(job_id: str, tenant: str) -> None:
    run_job(job_id, tenant)


# Outcomes are kept (TASK_OUTCOME_TTL_S) so that tests and operators can see what a
# given delivery did; they are one word each.
@app.task(name=SOLVE_BLOCK_TASK, base=JobTask, bind=True, ignore_result=False)
def solve_block(
    self: Task, job_id: str, tenant: str, attempt: int, set_index: int, block_index: int
) -> str:
    return run_block(
        job_id, tenant, attempt, set_index, block_index, worker=self.request.hostname or ""
    )


@app.task(name=ASSEMBLE_JOB_TASK, base=JobTask, ignore_result=False)
def assemble_job(job_id: str, tenant: str, attempt: int) -> str:
    return run_assembly(job_id, tenant, attempt)
