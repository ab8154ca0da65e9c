"""An offline wheelhouse for a GPU node: the wheels of every runtime dependency the node lacks or has out of tunelab's
ranges, plus tunelab's own, never torch — GPU nodes have a PyTorch built for their CUDA and often no internet.
`scripts/wheelhouse` drives target (the node's Python and platform), plan (pure: what to keep and carry), resolve (pip
itself) and build (the whole run)."""
