"""Memory of tunelab's own training step, simulated on the CPU with fake tensors (no GPU, no weights):
`simulate(model_config, StepConfig, StepShape)` builds the model as the trainer does, runs two optimizer steps with GPU
kernel stand-ins while a dispatch-level tracker feeds a model of the CUDA caching allocator, and returns what
max_memory_allocated / max_memory_reserved would report, plus the CUDA context; cached (run.py)."""

from tunelab.estimate.simulator.figures import CUDA_CONTEXT_GIB, SimulatedMemory
from tunelab.estimate.simulator.run import simulate
from tunelab.estimate.simulator.spec import ATTENTIONS, StepConfig, StepShape

__all__ = ["ATTENTIONS", "CUDA_CONTEXT_GIB", "SimulatedMemory", "StepConfig", "StepShape", "simulate"]
