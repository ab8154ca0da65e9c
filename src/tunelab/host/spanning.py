"""The environment that tells a run's job process its place among the run's nodes outside a Slurm job step: the Ray
executor's spanning job sets it (execute/ray_span.py), the job reads it (train/nodes.py), neither importing the other."""

JOB_MODULE = "tunelab.train.job"  # what each node runs: the job's own entry point
# the run's nodes, this node's rank, the first node's address (the rendezvous host), the rendezvous id
SPAN_ENV = ("TUNELAB_NODES", "TUNELAB_NODE_RANK", "TUNELAB_RDZV_HOST", "TUNELAB_RDZV_ID")
NODE_ADDRESS_ENV = "TUNELAB_NODE_ADDRESS"  # the node's address as its cluster knows it (else its hostname)
