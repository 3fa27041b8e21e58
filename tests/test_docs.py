"""Every ```python block of README.md and docs/*.md runs as written, so the docs cannot drift;
so does every `>>>` example in the packages' docstrings (`test_docstring_examples`).

A file's blocks run in order in one namespace, as a reader pasting them into one Python session
would, in a fresh process whose working directory is a temporary one (files a block writes go
there). A block that is deliberately not runnable says so in the line just before its fence,
`<!-- not run: the reason -->`; use it rarely. Shell blocks (```sh, ```bash, or no language)
are not run, but the scripts, tests and files they name must exist, and every `--flag` given to
a Python script must be one that script defines.

Pytest only (tests/BUILD leaves this file out): the Markdown files are not in a Bazel package.
"""

import doctest
import importlib
import inspect
import os
import pkgutil
import re
import subprocess
import sys

import pytest

import keras_layers
import tf_lsh_ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = os.path.dirname(os.path.dirname(os.path.abspath(keras_layers.__file__)))
DOCS = ["README.md"] + sorted(
    os.path.join("docs", name)
    for name in os.listdir(os.path.join(ROOT, "docs"))
    if name.endswith(".md")
)
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
NOT_RUN = re.compile(r"<!--\s*not run:\s*(.*?)\s*-->")
SHELL_LANGUAGES = {"", "sh", "bash", "shell", "console"}

# Runs in the fresh process: the blocks of one file, in one namespace, each compiled with its
# Markdown line numbers so that a traceback points into the file.
RUNNER = """
import sys
namespace = {"__name__": "__main__"}
for path, line, code in BLOCKS:
    exec(compile("\\n" * (line - 1) + code, path, "exec"), namespace)
"""


def code_blocks(relative_path):
    """[(language, first code line number, code, not-run reason or None)] of a Markdown file."""
    with open(os.path.join(ROOT, relative_path)) as f:
        lines = f.read().split("\n")
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, language = opening.groups()
        end = i + 1
        while not FENCE.match(lines[end]) or FENCE.match(lines[end]).group(2):
            end += 1
        body = [
            line[len(indent) :] if line.startswith(indent) else line for line in lines[i + 1 : end]
        ]
        marker = NOT_RUN.search(lines[i - 1]) if i > 0 else None
        blocks.append((language, i + 2, "\n".join(body), marker.group(1) if marker else None))
        i = end + 1
    return blocks


def python_blocks(relative_path):
    return [b for b in code_blocks(relative_path) if b[0] == "python"]


def test_the_docs_have_python_blocks_and_not_run_markers_give_reasons():
    assert python_blocks("README.md"), "the README's usage example is gone"
    for path in DOCS:
        for _, line, _, reason in python_blocks(path):
            assert reason != "", f"{path}:{line}: a 'not run' marker needs a reason"


@pytest.mark.parametrize("path", [p for p in DOCS if python_blocks(p)])
def test_python_blocks_run(path, tmp_path):
    blocks = [(path, line, code) for _, line, code, reason in python_blocks(path) if reason is None]
    result = subprocess.run(
        [sys.executable, "-c", f"BLOCKS = {blocks!r}\n{RUNNER}"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={
            **os.environ,
            "TF_CPP_MIN_LOG_LEVEL": "2",
            # The packages this test process imported (installed, or the checkout's with its
            # built library), not whatever else the checkout holds.
            "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), PACKAGES) if p),
        },
    )
    assert result.returncode == 0, f"{path}: a block failed\n{result.stderr[-4000:]}"


def named_paths(command_line):
    """The repository paths (scripts, tests, files) a shell line names."""
    return re.findall(r"(?<![\w/.$-])([\w.-]+(?:/[\w.-]+)+\.(?:py|sh|md|json))", command_line)


@pytest.mark.parametrize("path", DOCS)
def test_shell_blocks_name_real_scripts_and_flags(path):
    for language, line, code, _ in code_blocks(path):
        if language not in SHELL_LANGUAGES:
            continue
        for offset, command_line in enumerate(code.split("\n")):
            where = f"{path}:{line + offset}"
            command = command_line.split("#")[0]
            for named in named_paths(command):
                assert os.path.exists(os.path.join(ROOT, named)), f"{where}: no {named}"
            script = re.search(r"([\w./-]+\.py)\b", command)
            if script and os.path.exists(os.path.join(ROOT, script.group(1))):
                with open(os.path.join(ROOT, script.group(1))) as f:
                    source = f.read()
                for flag in re.findall(r"(?<![\w-])(--[\w-]+)", command[script.end() :]):
                    assert f'"{flag}"' in source, f"{where}: {script.group(1)} has no {flag}"


def _modules(package):
    """The package's Python modules: not its compiled `_lsh_ops`, nor one the package has not
    imported and that is named as something else it exports (importing
    `tf_lsh_ops.upgrade_saved_model`, the command, would put the module where the package's
    function of that name is)."""
    for info in pkgutil.iter_modules(package.__path__):
        name = f"{package.__name__}.{info.name}"
        exported = getattr(package, info.name, None)
        shadows = name not in sys.modules and not (exported is None or inspect.ismodule(exported))
        if not info.name.startswith("_lsh_ops") and not shadows:
            yield importlib.import_module(name)


@pytest.mark.parametrize(
    "module",
    [m for package in (tf_lsh_ops, keras_layers) for m in _modules(package)],
    ids=lambda m: m.__name__,
)
def test_docstring_examples(module):
    # The examples read as if after `import numpy as np, tensorflow as tf` and the packages'
    # public names.
    import keras
    import numpy as np
    import tensorflow as tf

    names = {**vars(tf_lsh_ops), **vars(keras_layers), **vars(module)}
    names.update(np=np, tf=tf, keras=keras, tf_lsh_ops=tf_lsh_ops, keras_layers=keras_layers)
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, module.__name__, globs=names):
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0


def test_the_docstrings_have_examples():
    counted = sum(
        len(test.examples)
        for package in (tf_lsh_ops, keras_layers)
        for module in _modules(package)
        for test in doctest.DocTestFinder().find(module, module.__name__)
    )
    assert counted >= 45


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
