"""An offline wheelhouse for a GPU node: the wheels of every runtime dependency of tunelab that the node's
environment lacks or has at a version outside tunelab's ranges, plus tunelab's own, never torch.

GPU nodes have a PyTorch built for their CUDA and often no internet, so the install there must keep that PyTorch
and take everything else from a folder. `scripts/wheelhouse` drives it:

- `target`: the node's Python and platform, as pip's `--python-version`/`--platform` and as marker values;
- `plan`: the pure part, tested without network: the node's `pip freeze` read, torch checked against tunelab's
  range, the constraints that keep what the node has, and pip's resolution sorted into kept / missing / out of
  range / torch's own;
- `resolve`: pip itself (build tunelab's wheel, a dry-run resolution with a report, the downloads);
- `build`: the whole run, writing the wheels, `requirements.txt` and `manifest.json`.
"""
