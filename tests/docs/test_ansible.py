"""Issue 20: the example Ansible role that rolls the agent out (deploy/ansible/): the playbook
passes `ansible-playbook --syntax-check` (ansible-core is in the dev extra), the agent.yaml it
templates is accepted by the agent's own config parser, and every file it copies exists."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
import yaml

from rebalancerd.agent import load_agent_config

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE = ROOT / "deploy" / "ansible"
ROLE = ANSIBLE / "roles" / "rebalancerd_agent"


def _ansible_playbook() -> str | None:
    here = Path(sys.executable).parent / "ansible-playbook"
    return str(here) if here.exists() else shutil.which("ansible-playbook")


def test_playbook_syntax_check(tmp_path: Path) -> None:
    exe = _ansible_playbook()
    if exe is None:
        pytest.skip("ansible-playbook not installed (pip install -e '.[dev]' brings it)")
    inv = tmp_path / "inventory.ini"
    inv.write_text("[hypervisors]\nhv1\n")
    env = dict(os.environ, ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"), HOME=str(tmp_path))
    r = subprocess.run(
        [exe, "--syntax-check", "-i", str(inv), str(ANSIBLE / "playbook-agent.yml")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ANSIBLE,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def _render(**overrides: object) -> str:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    ctx = {"inventory_hostname": "hv7", "role_path": str(ROLE)} | defaults | overrides
    # defaults refer to other variables ("{{ inventory_hostname }}"): resolve them once
    ctx = {k: env.from_string(v).render(ctx) if isinstance(v, str) else v for k, v in ctx.items()}
    return env.from_string((ROLE / "templates" / "agent.yaml.j2").read_text()).render(ctx)


@pytest.mark.parametrize("url", ["mqtts://mqtt.example:8883", "mqtt://127.0.0.1:1883"])
def test_templated_agent_config_is_valid(url: str, tmp_path: Path) -> None:
    f = tmp_path / "agent.yaml"
    f.write_text(_render(rebalancerd_broker_url=url, rebalancerd_cluster="prod"))
    cfg = load_agent_config(f)
    assert cfg.host == "hv7" and cfg.cluster == "prod" and cfg.broker.url == url
    if url.startswith("mqtts"):
        assert str(cfg.broker.cert_file) == "/etc/rebalancerd/tls/hv7.crt"


def test_files_the_role_copies_exist() -> None:
    tasks = yaml.safe_load((ROLE / "tasks" / "main.yml").read_text())
    srcs = [
        t["ansible.builtin.copy"]["src"]
        for t in tasks
        if "src" in t.get("ansible.builtin.copy", {})
    ]
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    srcs.append(defaults["rebalancerd_constraints_file"])
    checked = 0
    for s in srcs:
        if "role_path" not in s:
            continue  # operator-supplied (TLS files, the .deb)
        p = Path(s.replace("{{ role_path }}", str(ROLE))).resolve()
        assert p.is_file(), s
        checked += 1
    assert checked >= 2
