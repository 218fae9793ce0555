"""Issue 20, CLI items an operator expects: completion and a man page generated from the parser,
a quiet end when the reader of the output goes away (a real pipe), NO_COLOR / TTY detection,
every daemon/agent config problem at once with file:line:col, and the slim agent install (the
agent's entry point imports no solver, numpy or pandas)."""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rebalancerd.cli.control import print_status
from rebalancerd.cli.docs import manpage
from rebalancerd.cli.main import build_parser
from rebalancerd.cli.style import use_color

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rebalancerd.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        **kw,  # type: ignore[call-overload]
    )


def _commands(p: argparse.ArgumentParser, prefix: str = "") -> list[tuple[str, list[str]]]:
    """(full command name, its option strings) for every subcommand, recursively."""
    out: list[tuple[str, list[str]]] = []
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sp in a.choices.items():
                full = f"{prefix} {name}".strip()
                opts = [
                    o for x in sp._actions for o in x.option_strings if o not in ("-h", "--help")
                ]
                out.append((full, opts))
                out += _commands(sp, full)
    return out


# -- man page and completion ------------------------------------------------------------------


def test_manpage_lists_every_command_and_option_and_is_valid_roff() -> None:
    parser = build_parser()
    page = manpage(parser)
    commands = _commands(parser)
    assert len(commands) >= 15
    for full, opts in commands:
        assert f".SS {full}\n" in page, full
        section = page.split(f".SS {full}\n", 1)[1].split(".SS ", 1)[0]
        for o in opts:
            assert o.replace("-", "\\-") in section, (full, o)
    groff = shutil.which("groff")
    if groff is None:
        pytest.skip("groff not installed: roff syntax not checked")
    r = subprocess.run(
        [groff, "-man", "-Tutf8", "-ww", "-z"], input=page, capture_output=True, text=True
    )
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_manpage_command_prints_the_page() -> None:
    r = cli("manpage")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(".TH REBALANCERD 1")


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_script_parses_and_knows_every_command(shell: str, tmp_path: Path) -> None:
    r = cli("completion", shell)
    assert r.returncode == 0, r.stderr
    for full, _ in _commands(build_parser()):
        assert full.split()[-1] in r.stdout, full
    exe = shutil.which(shell)
    if exe is None:
        pytest.skip(f"{shell} not installed: syntax not checked")
    script = tmp_path / f"completion.{shell}"
    script.write_text(r.stdout)
    check = subprocess.run([exe, "-n", str(script)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_bash_completion_completes_subcommands(tmp_path: Path) -> None:
    bash = shutil.which("bash")
    assert bash is not None
    script = tmp_path / "c.bash"
    script.write_text(cli("completion", "bash").stdout)
    probe = textwrap.dedent(
        f"""
        source {script}
        COMP_WORDS=(rebalancerd sim); COMP_CWORD=1; COMP_LINE="rebalancerd sim"
        COMP_POINT=${{#COMP_LINE}}
        _shtab_rebalancerd rebalancerd sim rebalancerd
        printf '%s\\n' "${{COMPREPLY[@]}}"
        """
    )
    r = subprocess.run([bash, "-c", probe], capture_output=True, text=True, timeout=30)
    assert r.stdout.split() == ["simulate"], (r.stdout, r.stderr)


# -- SIGPIPE ----------------------------------------------------------------------------------


def test_closed_pipe_ends_quietly() -> None:
    """A real pipe whose reader is gone before the command writes: no traceback, exit 141."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rebalancerd.cli.main",
            "snapshot",
            "--generate",
            "--hosts",
            "500",
            "--vms",
            "5000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader goes away at once (like `| head` after its lines)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert err == "", err


def test_head_in_a_shell_pipeline_sees_no_traceback() -> None:
    r = subprocess.run(
        [
            "bash",
            "-c",
            f"set -o pipefail; {sys.executable} -m rebalancerd.cli.main snapshot "
            "--generate --hosts 500 --vms 5000 | head -c 10 >/dev/null",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert r.returncode == 141, (r.returncode, r.stderr)
    assert r.stderr == ""


# -- colour -----------------------------------------------------------------------------------


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


STATUS = {
    "daemon": {
        "version": "x",
        "pid": 1,
        "phase": "running",
        "healthy": False,
        "health": "stalled",
        "journal_writable": True,
    },
    "hosts": [{"name": "h1", "state": "stale", "vms": 1, "cpu_load": 0.5, "memory_load": 0.5}],
}


def test_colour_only_on_a_terminal_and_never_with_no_color() -> None:
    assert use_color(_Tty(), env={"TERM": "xterm"})
    assert not use_color(_Tty(), env={"TERM": "xterm", "NO_COLOR": ""})
    assert not use_color(_Tty(), env={"TERM": "dumb"})
    assert not use_color(io.StringIO(), env={"TERM": "xterm"})
    on, off = _Tty(), _Tty()
    print_status(STATUS, on, color=True)
    print_status(STATUS, off, color=False)
    assert "\x1b[31mUNHEALTHY\x1b[0m" in on.getvalue()
    assert "\x1b[" not in off.getvalue() and "UNHEALTHY" in off.getvalue()
    # same columns with or without colour
    strip = on.getvalue()
    for code in ("\x1b[31m", "\x1b[32m", "\x1b[33m", "\x1b[0m"):
        strip = strip.replace(code, "")
    assert strip == off.getvalue()


def test_console_logs_follow_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    from rebalancerd.logging import _colors

    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert _colors(_Tty())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not _colors(_Tty())


# -- config errors at once --------------------------------------------------------------------

BAD_DAEMON = """\
simulate: false
broker:
  url: 42
  kepalive_s: 3
intervals:
  plan_s: -5
"""


def test_daemon_config_reports_every_problem_with_its_place(tmp_path: Path) -> None:
    f = tmp_path / "rebalancerd.yaml"
    f.write_text(BAD_DAEMON)
    r = cli("run", "--config", str(f), "--check")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert all(ln.startswith("rebalancerd: error: ") for ln in lines), lines
    assert f"rebalancerd: error: {f}:3:8: broker.url: Input should be a valid string" in lines
    assert f"rebalancerd: error: {f}:4:3: broker.kepalive_s: unknown key" in lines
    assert any(ln.startswith(f"rebalancerd: error: {f}:6:11: intervals.plan_s:") for ln in lines)
    assert any("inventory: required unless simulate" in ln for ln in lines)
    j = cli("run", "--config", str(f), "--check", "--json")
    doc = json.loads(j.stdout)
    assert doc["ok"] is False and len(doc["problems"]) == 4, doc


def test_agent_config_reports_every_problem_with_its_place(tmp_path: Path) -> None:
    f = tmp_path / "agent.yaml"
    f.write_text('host: "bad name!"\ninterval_s: 0\nbroker:\n  url: mqtt://x:1883\n  bogus: 1\n')
    r = cli("agent", "--config", str(f), "--once")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith(f"rebalancerd: error: agent config {f}:1:7: host:")
    assert lines[1].startswith(f"rebalancerd: error: agent config {f}:2:13: interval_s:")
    assert lines[2] == f"rebalancerd: error: agent config {f}:5:3: broker.bogus: unknown key"


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    f = tmp_path / "agent.yaml"
    f.write_text("host: hv1\nbroker: [unclosed\n")
    r = cli("agent", "--config", str(f), "--once")
    assert r.returncode == 2
    assert f"agent config {f}:3:1: invalid YAML" in r.stderr, r.stderr


# -- slim agent install -----------------------------------------------------------------------

BLOCKER = """
import importlib.abc, sys
BLOCKED = {"ortools", "numpy", "pandas"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Block())
"""


def _blocked(code: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_agent_entry_point_needs_no_solver_numpy_or_pandas(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("host: hv1\ncluster: c\nbroker: {url: 'mqtt://127.0.0.1:9'}\nbogus: 1\n")
    r = _blocked(
        """
        import sys
        from rebalancerd.cli.main import main
        import rebalancerd.agent
        rc = main(["agent", "--config", sys.argv[1], "--once"])
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print(rc, heavy)
        """,
        str(cfg),
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "2 []", (r.stdout, r.stderr)
    assert "bogus: unknown key" in r.stderr  # it really ran the agent's config path


def test_solver_command_without_the_extra_names_it() -> None:
    r = _blocked(
        """
        import sys
        from rebalancerd.cli.main import main
        sys.exit(main(["snapshot", "--generate", "--hosts", "2", "--vms", "2", "-o",
                       "/dev/null"]))
        """
    )
    # snapshot --generate is pure Python; plan is not
    assert r.returncode == 0, r.stderr
    r = _blocked(
        """
        import sys
        from rebalancerd.cli.main import main
        sys.exit(main(["demo", "--duration", "1"]))
        """
    )
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "pip install 'rebalancerd[offline]'" in r.stderr and "Traceback" not in r.stderr


# -- one imbalance definition -----------------------------------------------------------------


@pytest.mark.parametrize("policy", [None, "policies/balance.yaml", "policies/maintenance.yaml"])
def test_snapshot_check_reports_the_imbalance_plan_starts_from(
    policy: str | None, tmp_path: Path
) -> None:
    snap = tmp_path / "s.json"
    gen = cli(
        "snapshot", "--generate", "--hosts", "12", "--vms", "90", "--seed", "4", "-o", str(snap)
    )
    assert gen.returncode == 0, gen.stderr
    extra = ["--policy", policy] if policy else []
    for f in (str(snap), "examples/snapshot-small.json"):
        chk = cli("snapshot", "--check", f, "--json", *extra)
        assert chk.returncode == 0, chk.stderr
        doc = json.loads(chk.stdout)
        plan = cli("plan", "--snapshot", f, "--json", "--time-limit", "1", *extra)
        assert plan.returncode == 0, plan.stderr
        before = json.loads(plan.stdout)["stats"]["imbalance_before"]
        assert doc["imbalance"] == round(before, 4), (f, policy, doc, before)
        assert "as `plan` measures it" in doc["imbalance_basis"]
