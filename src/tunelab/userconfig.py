"""The user's own config file: cluster settings that belong to a person, not to an experiment.

`$TUNELAB_CONFIG`, else `~/.config/tunelab/config.yaml`:

    executor: slurm            # optional: the default executor
    gpu: H100-80GB             # optional: the GPU jobs run on, planned for where none is (a login node)
    node_gpus: 4               # optional: GPUs one node of your cluster has (default: 8, assumed)
    slurm:                     # any key of resources.slurm in experiment.yaml
      account: my-lab
      partition: gpu
      setup: ["source ~/venvs/tunelab/bin/activate"]

The spec wins: a key set in experiment.yaml's `resources` replaces the same key from this file.
The merged result is written into every run.yaml, so a job never reads this file.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field

from tunelab.spec import ExecutorKind, ResourcesSpec, SlurmSpec, _Strict, load_yaml_model


class UserConfig(_Strict):
    executor: ExecutorKind | None = None
    gpu: str | None = None
    node_gpus: int | None = Field(None, ge=1)
    slurm: SlurmSpec | None = None


def user_config_path() -> Path:
    env = os.environ.get("TUNELAB_CONFIG")
    if env:
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "tunelab" / "config.yaml"


def load_user_config() -> UserConfig:
    """The user config, or an empty one when there is no file. $TUNELAB_CONFIG must exist if set."""
    path = user_config_path()
    if not path.is_file() and not os.environ.get("TUNELAB_CONFIG"):
        return UserConfig()
    return load_yaml_model(path, UserConfig, "user config file")


def merge_resources(spec_resources: ResourcesSpec, user: UserConfig | None = None) -> ResourcesSpec:
    """Spec `resources` over the user config: keys the spec sets win, the rest come from the file."""
    user = user if user is not None else load_user_config()
    data = spec_resources.model_dump(exclude_unset=True)
    if user.executor and "executor" not in spec_resources.model_fields_set:
        data["executor"] = user.executor
    if user.gpu and "gpu" not in spec_resources.model_fields_set:
        data["gpu"] = user.gpu
    if user.node_gpus and "node_gpus" not in spec_resources.model_fields_set:
        data["node_gpus"] = user.node_gpus
    if user.slurm is not None:
        slurm = user.slurm.model_dump(exclude_unset=True)
        if spec_resources.slurm is not None:
            slurm.update(spec_resources.slurm.model_dump(exclude_unset=True))
        data["slurm"] = slurm
    return ResourcesSpec.model_validate(data)
