"""The wheelhouse plan without network: a node's frozen list read, its torch checked against tunelab's range,
the constraints that keep what it has, and a resolution (in pip's report format) sorted into carried, kept and
torch's own. Expectations are written out by hand from the lists below."""

from __future__ import annotations

import pytest
from packaging.requirements import Requirement

from tunelab.errors import TunelabError
from tunelab.wheelhouse.plan import (
    Installed,
    applicable,
    check_torch,
    classify,
    constraints,
    is_torch_family,
    parse_freeze,
    parse_report,
)
from tunelab.wheelhouse.target import Target, platform_tags

LINUX = Target("3.12.3", "manylinux_2_28_x86_64")

# A node's `pip freeze`: a CUDA torch from PyTorch's own index, its CUDA libraries, an old rich, and an
# editable project of the lab's (skipped: not an installed release).
NODE = """\
# packages of the GPU node
torch==2.6.0+cu124
nvidia-cudnn-cu12==9.1.0.70
sympy==1.13.1
Jinja2==3.1.4
click==8.1.7
rich==12.6.0
-e git+https://example.invalid/lab/tools.git@abc#egg=labtools
"""

TUNELAB_REQUIRES = ("torch>=2.6", "rich>=13", "pyyaml>=6", "typer>=0.12", "jinja2>=3.1",
                    "colorama>=0.4; platform_system == 'Windows'", "pytest>=8; extra == 'dev'")


def test_parse_freeze_reads_versions_by_canonical_name_and_skips_comments_and_editables():
    have = parse_freeze(NODE)
    assert sorted(have) == ["click", "jinja2", "nvidia-cudnn-cu12", "rich", "sympy", "torch"]
    assert have["jinja2"] == Installed("Jinja2", "3.1.4")
    assert have["torch"].version == "2.6.0+cu124"


@pytest.mark.parametrize("line, says", [
    ("torch @ file:///croot/torch-2.6.0.whl", "no exact version"),
    ("rich>=13", "no exact version"),
    ("rich==13.*", "no exact version"),
    ("not a requirement line!", "not a `name==version` line"),
])
def test_parse_freeze_refuses_a_line_it_cannot_check_a_range_against_and_names_it(line, says):
    with pytest.raises(TunelabError) as err:
        parse_freeze(f"click==8.1.7\n{line}\n", file="have.txt")
    assert says in err.value.message and (err.value.file, err.value.field) == ("have.txt", "line 2")


def test_parse_freeze_refuses_a_package_listed_twice():
    with pytest.raises(TunelabError, match="listed twice"):
        parse_freeze("Rich==13.0.0\nrich==14.0.0\n")


def test_manylinux_platform_accepts_every_older_glibc_and_the_legacy_names():
    tags = platform_tags("manylinux_2_28_x86_64")
    assert tags[0] == "manylinux_2_28_x86_64" and tags[-1] == "manylinux1_x86_64"
    # 2_28 down to 2_5 (24 tags) plus manylinux2014 (= 2_17), manylinux2010 (= 2_12) and manylinux1 (= 2_5)
    assert len(tags) == 24 + 3
    assert tags.index("manylinux2014_x86_64") == tags.index("manylinux_2_17_x86_64") + 1
    # aarch64 wheels start at manylinux2014
    assert platform_tags("manylinux2014_aarch64") == ["manylinux_2_17_aarch64", "manylinux2014_aarch64"]
    assert platform_tags("linux_x86_64") == []


def test_target_refuses_what_is_not_a_python_version_or_a_platform_tag():
    with pytest.raises(TunelabError) as err:
        Target("2.7", "manylinux_2_28_x86_64")
    assert err.value.field == "--python"
    with pytest.raises(TunelabError) as err:
        Target("3.12", "ubuntu-22.04")
    assert err.value.field == "--platform"


def test_markers_are_the_nodes_not_this_machines():
    requires = ["triton; platform_system == 'Linux' and python_version < '3.15'",
                "colorama; sys_platform == 'win32'", "tomli; python_full_version < '3.11.0'",
                "pywin32; platform_machine == 'AMD64'", "pytest; extra == 'dev'", "bitsandbytes; extra == 'qlora'"]
    names = lambda target, extras=(): [r.name for r in applicable(requires, extras, target.markers())]  # noqa: E731
    assert names(LINUX) == ["triton"]
    assert names(Target("3.10.14", "manylinux_2_28_x86_64")) == ["triton", "tomli"]
    assert names(Target("3.12.3", "win_amd64")) == ["colorama", "pywin32"]
    assert names(LINUX, ["qlora"]) == ["triton", "bitsandbytes"]


def requires(*lines: str) -> list[Requirement]:
    return [Requirement(line) for line in lines]


@pytest.mark.parametrize("version", ["2.6.0+cu124", "2.14.1", "2.7.0a0+79aa17489c.nv25.04"])
def test_a_torch_in_range_is_kept_whatever_its_build(version):
    """An NGC pre-release counts as pip counts an installed one (prereleases allowed)."""
    have = parse_freeze(f"torch=={version}\n")
    assert check_torch(have, requires(*TUNELAB_REQUIRES), "have.txt") == Installed("torch", version)


def test_a_torch_below_the_floor_is_an_error_saying_it_is_too_old_never_a_download():
    with pytest.raises(TunelabError) as err:
        check_torch(parse_freeze("torch==2.5.1+cu121\n"), requires(*TUNELAB_REQUIRES), "have.txt")
    assert "torch 2.5.1+cu121 is too old" in err.value.message and "torch>=2.6" in err.value.message
    assert "never carries torch" in err.value.message and err.value.file == "have.txt"


def test_a_node_without_torch_is_told_to_install_its_own_build_first():
    with pytest.raises(TunelabError, match="the node has no torch"):
        check_torch(parse_freeze("click==8.1.7\n"), requires(*TUNELAB_REQUIRES), "have.txt")


def test_constraints_keep_what_the_node_has_except_direct_requirements_out_of_range():
    pins, out = constraints(parse_freeze(NODE), requires(*TUNELAB_REQUIRES))
    # torch at its public release (PyPI has 2.6.0, not +cu124); its CUDA libraries never pinned
    assert pins == {"torch": "torch==2.6.0", "sympy": "sympy==1.13.1", "jinja2": "Jinja2==3.1.4",
                    "click": "click==8.1.7"}
    assert out == {"rich": "the node has rich 12.6.0; tunelab requires rich>=13"}


def test_torch_family_is_torch_triton_and_the_cuda_packages_not_nvml():
    names = ("torch", "triton", "pytorch-triton-rocm", "nvidia-cudnn-cu12", "nvidia-nccl-cu13", "nvidia-nvjitlink",
             "nvidia-cublas", "cuda-bindings", "sympy", "torchvision", "nvidia-ml-py")
    assert [n for n in names if is_torch_family(n)] == ["torch", "triton", "pytorch-triton-rocm", "nvidia-cudnn-cu12",
                                                        "nvidia-nccl-cu13", "nvidia-nvjitlink", "nvidia-cublas",
                                                        "cuda-bindings"]


def item(name: str, version: str, *requires: str, extras: tuple[str, ...] = ()) -> dict:
    """One `install` entry of pip's --report (format version 1), reduced to the fields the plan reads."""
    return {"metadata": {"name": name, "version": version, "requires_dist": list(requires)},
            "requested_extras": list(extras),
            "download_info": {"url": f"https://files.example/{name}-{version}.whl",
                              "archive_info": {"hashes": {"sha256": "0" * 64}}}}


# pip's resolution for the node under the pins above: tunelab, what it needs, and torch with what torch needs.
REPORT = {"version": "1", "install": [
    item("tunelab", "0.1.0", *TUNELAB_REQUIRES),
    item("torch", "2.6.0", "nvidia-cudnn-cu12==9.1.0.70; platform_system == 'Linux'", "sympy==1.13.1",
         "jinja2", "triton==3.2.0; platform_system == 'Linux'"),
    item("nvidia-cudnn-cu12", "9.1.0.70"), item("triton", "3.2.0"),
    item("sympy", "1.13.1", "mpmath<1.4,>=1.1.0"), item("mpmath", "1.3.0"),
    item("Jinja2", "3.1.4", "MarkupSafe>=2.0"), item("MarkupSafe", "3.0.2"),
    item("rich", "14.0.0", "markdown-it-py>=2.2.0", "pygments<3,>=2.13.0"),
    item("markdown-it-py", "3.0.0"), item("Pygments", "2.19.1"),
    item("PyYAML", "6.0.2"),
    item("typer", "0.15.1", "click>=8.0.0", "rich>=10.11.0"), item("click", "8.1.7"),
]}


def test_classify_carries_the_missing_and_out_of_range_keeps_the_rest_and_never_torch():
    have = parse_freeze(NODE + "MarkupSafe==3.0.2\n")
    plan = classify(parse_report(REPORT), have, have["torch"], LINUX.markers())
    carried = {w.name: (w.version, w.why, w.detail) for w in plan.wheels}
    assert plan.wheels[0].name == "tunelab" and plan.wheels[0].why == "tunelab itself"
    assert carried == {
        "tunelab": ("0.1.0", "tunelab itself", "built from this checkout"),
        "rich": ("14.0.0", "out of range", "the node has 12.6.0; tunelab 0.1.0 requires rich>=13"),
        "markdown-it-py": ("3.0.0", "missing", "required by rich"),
        "pygments": ("2.19.1", "missing", "required by rich"),
        "pyyaml": ("6.0.2", "missing", "required by tunelab"),
        "typer": ("0.15.1", "missing", "required by tunelab"),
    }
    # jinja2 is tunelab's own requirement too (kept, not torch's); sympy/mpmath are reached only through torch
    assert [(p.name, p.version) for p in plan.kept] == [("click", "8.1.7"), ("Jinja2", "3.1.4"),
                                                         ("MarkupSafe", "3.0.2")]
    assert [(p.name, p.version) for p in plan.torch_own] == [("mpmath", "absent"), ("nvidia-cudnn-cu12", "9.1.0.70"),
                                                             ("sympy", "1.13.1"), ("triton", "absent")]
    assert plan.torch == Installed("torch", "2.6.0+cu124")


def test_a_package_replaced_for_no_single_requirement_carries_the_reason_pip_gave():
    """The node's click 8.1.7 satisfies every requirement in the resolution, yet pip could not keep it (its pin
    conflicted with a version pip tried first): the plan says so in pip's words, never silently."""
    report = {"version": "1", "install": [item("tunelab", "0.1.0", "click>=8"), item("click", "8.2.0")]}
    have = parse_freeze("torch==2.6.0\nclick==8.1.7\n")
    why = "pip could not keep click==8.1.7: x 1.0 depends on click>=8.2"
    plan = classify(parse_report(report), have, have["torch"], LINUX.markers(), reasons={"click": why})
    assert [(w.name, w.why, w.detail) for w in plan.wheels[1:]] == [("click", "out of range", why)]


def test_extras_asked_below_the_top_level_bring_their_requirements():
    """pip's report records extras for the top level only; textual asks markdown-it-py[linkify], whose
    linkify-it-py is then tunelab's need (carried), not a stray of torch's."""
    report = {"version": "1", "install": [
        item("tunelab", "0.1.0", "textual>=8"), item("textual", "8.2.8", "markdown-it-py[linkify]>=2.1.0"),
        item("markdown-it-py", "4.0.0", "mdurl~=0.1", "linkify-it-py<3,>=1; extra == 'linkify'"),
        item("mdurl", "0.1.2"), item("linkify-it-py", "2.0.3", "uc-micro-py"), item("uc-micro-py", "1.0.3"),
    ]}
    have = parse_freeze("torch==2.6.0\ntextual==8.2.8\nmarkdown-it-py==4.0.0\nmdurl==0.1.2\n")
    plan = classify(parse_report(report), have, have["torch"], LINUX.markers())
    assert [(w.name, w.detail) for w in plan.wheels[1:]] == [("linkify-it-py", "required by markdown-it-py"),
                                                            ("uc-micro-py", "required by linkify-it-py")]
    assert plan.torch_own == []
