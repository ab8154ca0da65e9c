"""Memory of tunelab's own training step, simulated on the CPU with fake tensors (no GPU, no weights).

`simulate(model_config, StepConfig, StepShape)` builds the model as the trainer does (build.py), runs two
optimizer steps with GPU kernel stand-ins (step.py, attention.py, qlora.py) while a dispatch-level
tracker counts live storages through a model of the CUDA caching allocator (tracker.py, allocator.py),
and returns what `torch.cuda.max_memory_allocated` / `max_memory_reserved` would report, plus the CUDA
context. Results are cached on everything they depend on (run.py).
"""

from tunelab.estimate.simulator.run import CUDA_CONTEXT_GIB, SimulatedMemory, simulate
from tunelab.estimate.simulator.spec import ATTENTIONS, StepConfig, StepShape

__all__ = ["ATTENTIONS", "CUDA_CONTEXT_GIB", "SimulatedMemory", "StepConfig", "StepShape", "simulate"]
