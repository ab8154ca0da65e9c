"""Slurm's afterok on Ray, which has no job dependencies: a job submitted behind another (a run's evaluation behind
its training) goes first as a *gate*, a Ray job asking for nothing, whose entrypoint is this module. It waits for
the job it depends on to end; if that succeeded it submits the real job (under the gate's id + CHILD_SUFFIX, with
the CPUs and GPUs it asks for) and exits; if not, it exits without submitting anything, which the executor reads
as Slurm's DependencyNeverSatisfied (execute/ray_cluster.py). So the evaluation holds no CPU or GPU while its
training runs, and the dependency holds whether or not the coordinator that submitted both is still there.

`python -m tunelab.execute.ray_after ADDRESS AFTER CHILD SPEC_JSON` (SPEC_JSON: the child's submit_job keywords;
ADDRESS: the job server's URL). Runs on a Ray node; speaks to the job server over its REST API
(execute/ray_rest.py), so the gate's own start pays no import of Ray.
"""

from __future__ import annotations

import json
import sys
import time

from tunelab.execute.ray_rest import JobServer

CHILD_SUFFIX = "-job"
# the wait between the training's end and its evaluation's submission is up to one poll, paid by every run; a poll
# is one small GET to the job server on the head (the job's status), cheap at five a second
POLL_S = 0.2
SUCCEEDED = "SUCCEEDED"
ENDED = ("SUCCEEDED", "FAILED", "STOPPED")


def wait_for(server: JobServer, job: str) -> str:
    """The job's final status, polled until it ends."""
    while True:
        status = server.get_job(job).status
        if status in ENDED:
            return status
        time.sleep(POLL_S)


def main(argv: list[str]) -> int:
    address, after, child, spec = argv[0], argv[1], argv[2], json.loads(argv[3])
    client = JobServer(address)
    print(f"[tunelab gate] waiting for job {after} (afterok)", flush=True)
    ended = wait_for(client, after)
    if ended != SUCCEEDED:
        print(f"[tunelab gate] job {after} ended {ended}: DependencyNeverSatisfied, {child} not submitted", flush=True)
        return 0
    client.submit_job(submission_id=child, **spec)
    print(f"[tunelab gate] job {after} succeeded: submitted {child}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
