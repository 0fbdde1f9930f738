"""The READMEs' commands work as typed in a fresh shell after `make setup`: each shell code block
line, read in order as one session (its activation line and exports carried on), starts a program
the shell finds, and each kmervae command's --help runs without a traceback."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
READMES = ("README.md", "deploy/README.md")
STATE = {".", "source", "export", "cd"}  # lines that set up the session: run as written
# programs the READMEs name that kmervae does not install (a container engine, a scheduler, a
# cluster client, a monitoring server): the user brings them, so the test does not look for them
EXTERNAL = {"docker", "sbatch", "kubectl", "scancel", "prometheus"}
# a fresh login shell's environment, without anything this test process has (its venv on PATH)
FRESH_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}


def shell_lines(markdown: str) -> list[str]:
    """The command lines of a Markdown text's ```bash blocks: continuations joined, comments and
    blank lines left out."""
    lines = []
    for block in re.findall(r"^ *```bash\n(.*?)^ *```", markdown, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def words(line: str) -> list[str]:
    """A command line's words after its leading VAR=value assignments."""
    out = shlex.split(line)
    while out and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", out[0]):
        out.pop(0)
    return out


def check_of(line: str) -> tuple[str, str | None]:
    """(shell command checking that the line's program is found, the Python module whose --help the
    line's command has, or None): `python -m train ...` and `torchrun ... -m train ...` -> train."""
    first = words(line)
    program = first[0]
    module = first[first.index("-m") + 1] if "-m" in first and program in ("python", "torchrun") else None
    if program == "make":
        return f"make -n -C {shlex.quote(str(ROOT))} {shlex.quote(first[1])} >/dev/null", None
    if program in ("python", "bash") and module is None:
        return f"test -f {shlex.quote(first[1])}", None
    return f"command -v {program} >/dev/null", module


# Run by the shell's own `python` (the one a user's typed commands get): each module's --help in
# this one process (a torch import is ~5 CPU-seconds a process), then torchrun's own entry point.
HELPS = r"""
import contextlib, io, json, runpy, shutil, sys, traceback
results = {}
for name in json.loads(sys.argv[1]) + ["torchrun"]:
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            sys.argv = [name, "--help"]
            if name == "torchrun":
                runpy.run_path(shutil.which("torchrun"), run_name="__main__")
            else:
                runpy.run_module(name, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        code = e.code or 0
    except BaseException:
        code, _ = 1, out.write(traceback.format_exc())
    results[name] = [code, out.getvalue()]
print(json.dumps(results))
"""


def session(readme: str) -> str:
    """The shell script checking `readme`'s command lines in order, then every module's help."""
    script, modules = ["set -e", f"cd {shlex.quote(str(ROOT))}"], []
    for line in shell_lines((ROOT / readme).read_text()):
        program = words(line)[0]
        if program in STATE:
            script.append(line)
        elif program not in EXTERNAL:
            check, module = check_of(line)
            script.append(f"{check} || {{ echo {shlex.quote('not found as typed: ' + line)} >&2; exit 9; }}")
            modules += [module] if module and module not in modules else []
    script.append(f"python -c {shlex.quote(HELPS)} {shlex.quote(json.dumps(modules))}")
    return "\n".join(script)


@pytest.mark.parametrize("readme", READMES)
def test_every_readme_command_works_as_typed_in_a_fresh_shell(readme):
    proc = subprocess.run(["env", "-i", *(f"{k}={v}" for k, v in FRESH_ENV.items()), "bash", "-c", session(readme)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    helps = json.loads(proc.stdout.splitlines()[-1])
    for name, (code, text) in helps.items():
        assert code == 0 and "Traceback" not in text, f"{name} --help: exit {code}\n{text[-1500:]}"
        assert "usage:" in text, f"{name} --help printed no usage:\n{text[:500]}"


def test_the_readme_commands_name_every_kmervae_command_and_torchrun():
    """What the fresh-shell test covers: the README's own commands, not an empty list."""
    checked = {check_of(line)[1] for line in shell_lines((ROOT / "README.md").read_text())
               if words(line)[0] not in STATE | EXTERNAL}
    assert {"ingest", "train", "train.launch", "train.encode", "train.evaluate", "train.report"} <= checked
    assert any(words(line)[0] == "torchrun" for line in shell_lines((ROOT / "README.md").read_text()))
