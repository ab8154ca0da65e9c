"""A user's inspect-ai task file: each way it can be wrong is one clear error naming the file (and the
task), found before any model loads; a good one gives the Task its @task function builds."""

from __future__ import annotations

import textwrap

import pytest

from tunelab.errors import TunelabError
from tunelab.evaluate.usertasks import check_tasks, resolve_user_task
from tunelab.rundir.config import RunConfig
from tunelab.spec import TaskSpec, load_spec

GOOD = """
from inspect_ai import Task, task
from inspect_ai.dataset import Sample
from inspect_ai.scorer import match
from inspect_ai.solver import generate


@task
def words(n: int = 2, upper: bool = False):
    items = ["apple", "banana", "cherry"][:n]
    return Task(dataset=[Sample(input=w, target=w.upper() if upper else w) for w in items],
                solver=generate(), scorer=match())
"""
SECOND = """

@task(name="other_task")
def other():
    return Task(dataset=[Sample(input="x", target="y")], solver=generate(), scorer=match())
"""


def _file(tmp_path, text: str, name: str = "my_task.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _spec(path, **kw) -> TaskSpec:
    return TaskSpec(name="mine", file=str(path), **kw)


def test_good_file_builds_its_task_with_args(tmp_path):
    path = _file(tmp_path, GOOD)
    ut = resolve_user_task(_spec(path, args={"n": 3, "upper": True}))
    assert ut.function == "words" and ut.path == path
    task = ut.build()
    assert [(s.input, s.target) for s in task.dataset] == [("apple", "APPLE"), ("banana", "BANANA"),
                                                           ("cherry", "CHERRY")]


def test_choosing_among_several_tasks(tmp_path):
    path = _file(tmp_path, GOOD + SECOND)
    with pytest.raises(TunelabError, match=r"several @task functions \(other_task, words\); choose one with task:") as e:
        resolve_user_task(_spec(path))
    assert str(path) in str(e.value)
    assert resolve_user_task(_spec(path, task="other_task")).function == "other_task"
    assert resolve_user_task(_spec(path, task="other")).function == "other_task"  # the Python name works too
    with pytest.raises(TunelabError, match=r"no @task 'nope' in the file \(it has: other_task, words\)"):
        resolve_user_task(_spec(path, task="nope"))


@pytest.mark.parametrize("text, match", [
    (GOOD + "\nraise ValueError('broken on purpose')\n",
     r"task file does not import: ValueError: broken on purpose \(line \d+: raise ValueError"),
    ("import not_a_module_anywhere_xyz\n", r"does not import: ModuleNotFoundError: No module named"),
    ("def f(:\n", r"does not import: SyntaxError"),
    ("x = 1\n", r"no @task function in the task file"),
])
def test_broken_files(tmp_path, text, match):
    path = _file(tmp_path, text)
    with pytest.raises(TunelabError, match=match) as e:
        resolve_user_task(_spec(path))
    assert str(e.value).startswith(str(path))


def test_missing_file_and_unknown_args(tmp_path):
    with pytest.raises(TunelabError, match="task file not found"):
        resolve_user_task(_spec(tmp_path / "nope.py"))
    path = _file(tmp_path, GOOD)
    with pytest.raises(TunelabError, match=r"args \['colour'\] do not fit words\(n, upper\)") as e:
        resolve_user_task(_spec(path, args={"colour": "red"}))
    assert "eval.tasks.mine.args" in str(e.value)


def test_a_task_that_raises_when_built_names_the_line(tmp_path):
    path = _file(tmp_path, """
        from inspect_ai import task

        @task
        def bad():
            return 1 / 0
    """)
    with pytest.raises(TunelabError, match=r"task bad\): the task raised ZeroDivisionError: .* \(line 6: return 1 / 0\)"):
        resolve_user_task(_spec(path)).build()


def _run_cfg(tmp_path, path, prompt="Q: {input}", task_prompt=None, builtin=True) -> RunConfig:
    data = tmp_path / "d.json"
    data.write_text('{"train": [{"input": "a", "output": "A"}], "test": [{"input": "a", "output": "A"}]}')
    return RunConfig(name="r", kind="control", experiment="x", experiment_dir=str(tmp_path),
                     model={"name": "m", "path": str(tmp_path)}, dataset={"name": "d", "path": str(data)},
                     prompt=prompt, training=None,
                     eval={"tasks": ["exact_match"] * builtin + [{"name": "mine", "file": str(path),
                                                                  "prompt": task_prompt}]})


def test_check_tasks_of_a_run(tmp_path):
    path = _file(tmp_path, GOOD)
    check_tasks(_run_cfg(tmp_path, path))
    with pytest.raises(TunelabError, match=r"names field\(s\) context.*set `prompt:` on the task") as e:
        check_tasks(_run_cfg(tmp_path, path, prompt="{context}: {input}", builtin=False))
    assert str(path) in str(e.value)
    check_tasks(_run_cfg(tmp_path, path, prompt="{context}: {input}", task_prompt="{input}", builtin=False))


def test_check_tasks_of_a_spec_resolves_files_from_the_spec_dir(write_spec):
    spec_path = write_spec(eval={"tasks": [{"name": "mine", "file": "tasks/my_task.py", "args": {"n": 1}}]})
    (spec_path.parent / "tasks").mkdir()
    _file(spec_path.parent / "tasks", GOOD)
    check_tasks(load_spec(spec_path), spec_path.parent)
    (spec_path.parent / "tasks" / "my_task.py").write_text("x = 1\n")
    with pytest.raises(TunelabError, match="no @task"):
        check_tasks(load_spec(spec_path), spec_path.parent)


def test_built_in_tasks_are_checked_on_their_rows_without_inspect_ai(tmp_path):
    """A plan checks every built-in task before a job starts; the check reads the rows (an answer outside the
    options, a numeric answer that is no number: the errors the evaluation would stop with) and leaves inspect-ai's
    import (1.5 s of a cold plan's CPU) to the evaluation. Run in a fresh interpreter: this one has imported it."""
    import json
    import subprocess
    import sys

    data = tmp_path / "d.json"
    data.write_text(json.dumps({"train": [{"input": "a", "output": "A"}],
                                "test": [{"input": "a", "output": "A"}, {"input": "b", "output": "B"}]}))
    code = textwrap.dedent(f"""
        import sys
        from tunelab.errors import TunelabError
        from tunelab.evaluate.usertasks import check_tasks
        from tunelab.rundir.config import RunConfig

        def cfg(tasks):
            return RunConfig(name="r", kind="control", experiment="x", experiment_dir={str(tmp_path)!r},
                             model={{"name": "m", "path": {str(tmp_path)!r}}},
                             dataset={{"name": "d", "path": {str(data)!r}}}, prompt="Q: {{input}}", training=None,
                             eval={{"tasks": tasks}})

        check_tasks(cfg(["exact_match", "includes", {{"name": "pick", "builtin": "choice"}}]))
        for bad in ({{"name": "pick", "builtin": "choice", "options": ["A", "C"]}},
                    {{"name": "n", "builtin": "numeric"}}):
            try:
                check_tasks(cfg([bad]))
            except TunelabError as e:
                print("error:", e)
        print("inspect_ai imported:", "inspect_ai" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "error: eval.tasks.pick.options: task 'pick': the answer 'B' of test row 1 is not among the options ['A', 'C']" in out
    assert "error: task 'n': the answer 'A' of test row 0 is not a number" in out
    assert "inspect_ai imported: False" in out
