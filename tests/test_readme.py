"""The README's quick start, run as written (addresses moved to free ports)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXED_PORTS = (9001, 9002, 8080, 9901)


def quick_start() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Quick start with your own config", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _moved(text: str, ports: dict[int, int]) -> str:
    return re.sub(r"\b(9001|9002|8080|9901)\b", lambda m: str(ports[int(m.group())]), text)


def _wait_port(port: int, proc: subprocess.Popen, what: str) -> None:
    for _ in range(200):
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"{what} never listened on {port}")


def test_quick_start_block_is_the_one_this_test_runs() -> None:
    lines = quick_start()
    assert lines[0].startswith("python -m venv .venv")
    assert any("proxy.demo_upstream --version v1 --port 9001 &" in ln for ln in lines)
    assert any(ln.startswith("canaryproxy serve -c config/example.yaml &") for ln in lines)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_quick_start_works_as_written(tmp_path: Path) -> None:
    ports = dict(zip(FIXED_PORTS, _free_ports(len(FIXED_PORTS)), strict=True))
    (tmp_path / "config").mkdir()
    example = (ROOT / "config" / "example.yaml").read_text()
    (tmp_path / "config" / "example.yaml").write_text(_moved(example, ports))
    bindir = os.path.dirname(sys.executable)
    env = {
        **os.environ,
        "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
        "CANARYPROXY_ADMIN": f"http://127.0.0.1:{ports[9901]}",
    }
    env.pop("CANARYPROXY_TOKEN", None)
    background: list[subprocess.Popen] = []
    try:
        for line in quick_start()[1:]:  # the first line installs: done by the test run itself
            command = _moved(line.split("  #", 1)[0].strip(), ports)
            if command.endswith("&"):
                argv = shlex.split(command[:-1])
                proc = subprocess.Popen(
                    argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, start_new_session=True,
                )  # fmt: skip
                background.append(proc)
                given = re.search(r"--port (\d+)", command)
                for port in [int(given.group(1))] if given else [ports[8080], ports[9901]]:
                    _wait_port(port, proc, command)
                continue
            done = subprocess.run(
                command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True,
                timeout=60,
            )  # fmt: skip
            assert done.returncode == 0, f"{command}: {done.stdout} {done.stderr}"
            assert "Traceback" not in done.stderr, command
            if command.startswith("curl"):
                assert done.stdout.strip() in ("v1", "v2"), done.stdout
            if "weights default v2=10" in command:
                assert "v1=90 v2=10" in done.stdout
    finally:
        for proc in reversed(background):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in background:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _yaml_block_after(heading: str) -> str:
    section = (ROOT / "README.md").read_text().split(heading, 1)[1]
    return section.split("```yaml\n", 1)[1].split("```", 1)[0]


def test_gateway_example_validates_and_routes_as_described() -> None:
    import yaml

    from proxy.config.validate import validate
    from proxy.routing.table import build_table

    doc = yaml.safe_load(_yaml_block_after("### A gateway in front of several services"))
    names = ("shop-v1", "shop-v2", "shop-shadow")
    doc["upstreams"] = {n: {"endpoints": [f"127.0.0.1:{9001 + i}"]} for i, n in enumerate(names)}
    config, errors = validate(doc)
    assert not errors, errors
    t = build_table(config)

    def decide(host: str, path: str, listener: str = "web"):
        return t.decide("GET", path, {"host": host}, "", 0.5, listener)

    moved = decide("old-shop.example.com", "/x")
    assert (moved.route.name, moved.reason) == ("to-new-shop", "redirect")
    shop = decide("SHOP.example.com:8080", "/old/a")
    assert shop.route.name == "shop" and shop.subset in ("shop-v1", "shop-v2")
    assert shop.route.rewrite.target("/old/a?q=1", shop.route.prefixes) == "/new/a?q=1"
    assert decide("a.shop.example.com", "/old").route.name == "shop"
    assert decide("shop.example.com", "/other").route is None  # no host-less route matches
    assert decide("x", "/", "internal").reason == "direct_response"
    assert decide("x", "/", "web").route is None
