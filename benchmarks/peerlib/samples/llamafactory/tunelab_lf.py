"""Written by tunelab's benchmarks/peerlib/llamafactory.py: register the model's chat template with
LLaMA-Factory's own register_template, then run its CLI (`llamafactory-cli ARGS`) in this process."""
import sys

from llamafactory.data.formatter import EmptyFormatter, StringFormatter
from llamafactory.data.template import register_template

register_template(
    name="tunelab_tiny",
    format_prefix=EmptyFormatter(slots=[{"bos_token"}]),
    format_system=StringFormatter(slots=["<|system|>{{content}}<|eot|>"]),
    format_user=StringFormatter(slots=["<|user|>{{content}}<|eot|><|assistant|>"]),
    format_assistant=StringFormatter(slots=["{{content}}<|eot|>"]),
    stop_words=["<|eot|>"],
)

from llamafactory.cli import main

sys.argv = ["llamafactory-cli", *sys.argv[1:]]
main()
