"""Usage errors of the governance CLI (exit 2), and one real `inferd keys create` in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.conftest import Cli


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["keys", "create"], "the following arguments are required: --tenant"),
        (["tenants", "create", "t", "--rpm", "abc"], "argument --rpm: expected a whole number >= 1"),
        (["tenants", "create", "t", "--max-concurrent", "0"], "argument --max-concurrent: expected"),
        (["tenants", "create", "t", "--payload-logging", "all"], "--payload-logging: invalid choice"),
        (["keys", "create", "--tenant", "t", "--expires-in", "3x"], "--expires-in: expected a duration"),
        (["keys", "create", "--tenant", "t", "--roles", "root"], "--roles: expected comma-separated"),
        (["budgets", "set", "--tenant", "t", "--cost", "-1"], "argument --cost: expected an amount >= 0"),
        (["budgets", "set", "--tenant", "t", "--period", "week"], "argument --period: invalid choice"),
        (["usage", "--by", "colour"], "argument --by: invalid choice"),
        (["audit", "--limit", "0"], "argument --limit: expected a whole number >= 1"),
        (["keys", "rotate", "k"], "invalid choice: 'rotate'"),
        (["keys", "revoke"], "the following arguments are required: key_id"),
    ],
)  # fmt: skip
def test_bad_flags_exit_2_with_a_message(
    cli: Cli, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli(*argv, "--state-dir", "state")
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not Path("state").exists()  # nothing was opened


def test_without_url_or_state_dir_is_a_usage_error(cli: Cli) -> None:
    result = cli("tenants", "list")
    assert result.code == 2 and "give --url" in result.err and not Path(".inferd").exists()


def test_update_without_a_change_is_a_usage_error(cli: Cli) -> None:
    assert cli("tenants", "create", "acme", "--state-dir", "state").code == 0
    result = cli("tenants", "update", "acme", "--state-dir", "state")
    assert result.code == 2 and "nothing to change" in result.err
    assert cli("tenants", "list", "--state-dir", "state").out.splitlines()[1].startswith("acme ")
    assert cli("prices", "list", "--state-dir", "state").out == "no prices\n"


def test_direct_mode_defaults_to_an_existing_dot_inferd(cli: Cli) -> None:
    assert cli("tenants", "create", "local", "--state-dir", ".inferd").code == 0
    assert [t["name"] for t in cli("tenants", "list", "--json").json()] == ["local"]


def test_keys_create_in_a_subprocess_prints_the_key_once(cli: Cli, tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    assert cli("tenants", "create", "acme", "--state-dir", state).code == 0
    result = subprocess.run(
        [sys.executable, "-m", "inferd.cli.main", "keys", "create", "--tenant", "acme", "--models", "mlp",
         "--roles", "user,admin", "--state-dir", state],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    keys = [word for word in result.stdout.split() if word.startswith("ik_")]
    assert len(keys) == 1 and "shown only this once" in result.stdout
    key_id = keys[0].split("_")[1]
    assert f"created API key {key_id} for tenant 'acme'" in result.stdout
    listed = cli("keys", "list", "--json", "--state-dir", state).json()
    assert [(k["key_id"], k["roles"], k["models"]) for k in listed] == [(key_id, ["admin", "user"], ["mlp"])]
    for stored in (tmp_path / "state").iterdir():  # the database holds only the key's hash
        assert keys[0].encode() not in stored.read_bytes()


def test_an_admin_key_that_cannot_be_a_header_is_refused_without_quoting_it(cli: Cli) -> None:
    result = cli("tenants", "list", "--url", "127.0.0.1:9", "--admin-key", "ik_secret\nvalue")
    assert result.code == 2 and "cannot carry" in result.err and "secret" not in result.err
