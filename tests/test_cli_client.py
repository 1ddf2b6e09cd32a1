"""Client verbs against a real App: output, exit codes, the server's reasons."""

from __future__ import annotations

import asyncio
import json
from argparse import Namespace
from collections.abc import AsyncIterator

import pytest
from test_app_helpers import TOKEN_ENV, config_text, running_app, upstreams

from proxy import client
from proxy.app import App

TOKEN = "cli-token"


@pytest.fixture
async def app(tmp_path, monkeypatch) -> AsyncIterator[App]:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    monkeypatch.setenv("CANARYPROXY_TOKEN", TOKEN)
    async with upstreams() as (p1, p2):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(config_text(p1, p2, 90, 10))
        async with running_app(cfg, tmp_path / "s") as a:
            yield a


def _url(app: App) -> str:
    return f"http://127.0.0.1:{app.admin_port}"


async def _run(fn, **kw) -> int:
    # the client blocks (urllib); run it off the loop that serves the App
    return await asyncio.to_thread(fn, Namespace(**kw))


async def test_status_table_and_json(app: App, capsys) -> None:
    assert await _run(client.cmd_status, admin=_url(app), json=False, watch=False) == 0
    out = capsys.readouterr().out
    assert "ROUTE" in out and "default" in out and "v2" in out and "1/1" in out
    assert await _run(client.cmd_status, admin=_url(app), json=True, watch=False) == 0
    assert json.loads(capsys.readouterr().out)["routes"][0]["weights"] == {"v1": 90, "v2": 10}


async def test_weights_switch_history_undo(app: App, capsys) -> None:
    url = _url(app)
    assert await _run(client.cmd_weights, admin=url, route="default", pairs=["v1=50", "v2=50"]) == 0
    assert "revision 2: default v1=50 v2=50" in capsys.readouterr().out
    assert await _run(client.cmd_switch, admin=url, route="default", subset="v2") == 0
    assert "v1=0 v2=100" in capsys.readouterr().out
    assert await _run(client.cmd_history, admin=url, json=False) == 0
    out = capsys.readouterr().out
    assert "weights" in out and "switch" in out
    assert await _run(client.cmd_undo, admin=url, to_revision=None) == 0
    assert "restored revision 2" in capsys.readouterr().out
    assert app.table is not None and app.table.weights()["default"] == {"v1": 50.0, "v2": 50.0}


async def test_errors_exit_1_with_the_server_reason(app: App, capsys) -> None:
    url = _url(app)
    assert await _run(client.cmd_weights, admin=url, route="default", pairs=["v3=1"]) == 1
    assert "no subset v3" in capsys.readouterr().err
    assert await _run(client.cmd_weights, admin=url, route="default", pairs=["v1"]) == 1
    assert "SUBSET=WEIGHT" in capsys.readouterr().err
    assert await _run(client.cmd_rollout, admin=url, action="promote", canary="nope") == 1
    assert "unknown canary" in capsys.readouterr().err
    assert await _run(client.cmd_rollout, admin=url, action="promote", canary="") == 1
    assert "no canary configured" in capsys.readouterr().err


async def test_wrong_token_and_unreachable_admin(app: App, capsys, monkeypatch) -> None:
    monkeypatch.setenv("CANARYPROXY_TOKEN", "wrong")
    assert await _run(client.cmd_history, admin=_url(app), json=False) == 1
    assert "401" in capsys.readouterr().err
    assert await _run(client.cmd_status, admin="http://127.0.0.1:1", json=False, watch=False) == 1
    assert "cannot reach the admin API at http://127.0.0.1:1" in capsys.readouterr().err


def test_parse_pairs() -> None:
    assert client.parse_pairs(["v1=90", "v2=10.5"]) == {"v1": 90.0, "v2": 10.5}
    for bad in (["v1"], ["=5"], ["v1=x"]):
        with pytest.raises(client.ClientError):
            client.parse_pairs(bad)


def test_status_table_lists_workers_when_present() -> None:
    st = {
        "revision": 3,
        "routes": [],
        "workers": [
            {"index": 0, "pid": 4242, "alive": True, "restarts": 0, "requests": 1500},
            {"index": 1, "pid": None, "alive": False, "restarts": 2, "requests": 0},
        ],
    }
    lines = client.format_status(st).splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("WORKER"))
    assert lines[head + 1].split() == ["0", "4242", "yes", "0", "1500"]
    assert lines[head + 2].split() == ["1", "-", "NO", "2", "0"]
    assert not any(line.startswith("WORKER") for line in client.format_status({}).splitlines())
