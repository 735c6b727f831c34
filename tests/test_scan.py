"""authproxy scan (issue 18): our keys found in files, folders and stdin by format and
checksum, reported by prefix and never in full; --check asks the database about each."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from authproxy.keys.format import generate_key
from tests.conftest import expire_in_database
from tests.daemon import REPO_ROOT, CliResult, DaemonLauncher, authproxy_env
from tests.keyforge import forge_key, with_checksum

SPACE = "plant-7"
MiB = 1 << 20


async def scan(
    *args: str, cwd: Path, stdin: bytes = b"", env: dict[str, str] | None = None
) -> CliResult:
    """``python -m authproxy scan *args`` in ``cwd``, with ``stdin``; no AUTHPROXY_* set."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "authproxy",
        "scan",
        *args,
        env=env or authproxy_env(PYTHONPATH=str(REPO_ROOT)),
        cwd=cwd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(stdin), 60)
    assert process.returncode is not None
    return CliResult(process.returncode, stdout.decode(), stderr.decode())


def findings(result: CliResult) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def prefix(key: str) -> str:
    return key[:14]


def look_alike() -> str:
    """48 characters of our format whose checksum is wrong."""
    key = with_checksum("asc_" + "L" * 38)
    return key[:-1] + ("A" if key[-1] != "A" else "B")


def make_tree(root: Path) -> dict[str, str]:
    """A project with keys in text files, and keys where the scan must not look."""
    keys = {name: generate_key().full for name in ("readme", "env", "big", "binary", "git")}
    (root / "src").mkdir(parents=True)
    (root / "README.md").write_text(
        f"# demo\n\ncurl -H 'Authorization: Bearer {keys['readme']}' …\n", encoding="utf-8"
    )
    (root / "src" / "settings.env").write_text(
        f"A=1\nNOT_A_KEY={look_alike()}\nKEY={keys['env']}\n", encoding="utf-8"
    )
    filler = b"x" * 99 + b"\n"
    (root / "src" / "big.log").write_bytes(
        filler * (2 * MiB // 100) + f"late: {keys['big']}\n".encode()
    )
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0" + keys["binary"].encode())
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text(f"token = {keys['git']}\n", encoding="utf-8")
    (root / "clean.txt").write_text("asc_ nothing here\n" * 100, encoding="utf-8")
    return keys


class TestScan:
    async def test_finds_keys_in_text_files_only(self, tmp_path: Path) -> None:
        """Keys in text files (one past 1 MiB) are found with path and line; a wrong
        checksum, a binary file and .git/ are not; the key itself is never printed."""
        keys = make_tree(tmp_path)
        result = await scan(cwd=tmp_path)  # default: the current folder
        assert result.exit_code == 1, result.stderr
        assert findings(result) == [
            {"path": "./README.md", "line": 3, "prefix": prefix(keys["readme"])},
            {"path": "./src/big.log", "line": 2 * MiB // 100 + 1, "prefix": prefix(keys["big"])},
            {"path": "./src/settings.env", "line": 3, "prefix": prefix(keys["env"])},
        ]
        for key in keys.values():
            assert key not in result.stdout and key not in result.stderr
        assert result.stderr == ""

    async def test_files_and_folders_named(self, tmp_path: Path) -> None:
        """Paths may be files or folders, several at once, reported as given."""
        keys = make_tree(tmp_path)
        result = await scan(str(tmp_path / "README.md"), str(tmp_path / "src"), cwd=tmp_path)
        assert result.exit_code == 1
        assert [(f["path"], f["prefix"]) for f in findings(result)] == [
            (str(tmp_path / "README.md"), prefix(keys["readme"])),
            (str(tmp_path / "src" / "big.log"), prefix(keys["big"])),
            (str(tmp_path / "src" / "settings.env"), prefix(keys["env"])),
        ]

    async def test_clean_tree_exits_0(self, tmp_path: Path) -> None:
        """Nothing found: exit 0 and no output."""
        (tmp_path / "a.txt").write_text(f"{look_alike()}\nasc_\n", encoding="utf-8")
        result = await scan(".", cwd=tmp_path)
        assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")

    async def test_stdin(self, tmp_path: Path) -> None:
        """'-' reads standard input (a pre-commit hook pipes the staged diff)."""
        key = generate_key().full
        diff = f"+++ b/app.py\n+API_KEY = '{key}'\n".encode()
        result = await scan("-", cwd=tmp_path, stdin=diff)
        assert result.exit_code == 1
        assert findings(result) == [{"path": "-", "line": 2, "prefix": prefix(key)}]
        assert (await scan("-", cwd=tmp_path, stdin=b"nothing\n")).exit_code == 0

    async def test_keys_next_to_each_other_and_inside_look_alikes(self, tmp_path: Path) -> None:
        """Two keys on a line, and a key right after a look-alike's prefix, are all found."""
        first, second = generate_key().full, generate_key().full
        (tmp_path / "a").write_text(f"{first}{second}\nasc_{second}\n", encoding="utf-8")
        result = await scan("a", cwd=tmp_path)
        assert [(f["line"], f["prefix"]) for f in findings(result)] == [
            (1, prefix(first)),
            (1, prefix(second)),
            (2, prefix(second)),
        ]

    async def test_links_are_not_followed_inside_folders(self, tmp_path: Path) -> None:
        """A symbolic link in a folder may point out of the tree: skipped."""
        outside = tmp_path / "outside.txt"
        outside.write_text(generate_key().full, encoding="utf-8")
        (tmp_path / "tree").mkdir()
        os.symlink(outside, tmp_path / "tree" / "link.txt")
        assert (await scan("tree", cwd=tmp_path)).exit_code == 0

    async def test_bad_usage_exits_2(self, tmp_path: Path) -> None:
        """A path that does not exist: exit 2, a JSON error naming it, nothing scanned."""
        (tmp_path / "a").write_text(generate_key().full, encoding="utf-8")
        result = await scan("a", "missing", cwd=tmp_path)
        assert result.exit_code == 2 and result.stdout == ""
        error = json.loads(result.stderr)["error"]
        assert error["code"] == "invalid_input" and "'missing'" in error["message"]
        assert (await scan("--no-such-flag", cwd=tmp_path)).exit_code == 2

    async def test_needs_no_config(self, tmp_path: Path) -> None:
        """Without --check the config is not read: a broken one does not stop a hook."""
        env = authproxy_env(AUTHPROXY_CONFIG=str(tmp_path / "missing.yaml"))
        (tmp_path / "a").write_text("clean\n", encoding="utf-8")
        assert (await scan("a", cwd=tmp_path, env=env)).exit_code == 0


class TestScanCheck:
    async def test_status_of_each_key_found(
        self, launcher: DaemonLauncher, database_url: str, tmp_path: Path
    ) -> None:
        """--check: active, revoked, expired, or unknown (not ours, or a forged secret
        behind a real lookup id)."""
        active = await launcher.create_key(SPACE)
        revoked = await launcher.create_key(SPACE)
        expired = await launcher.create_key(SPACE)
        await launcher.cli("keys", "revoke", "--space", SPACE, revoked["id"])
        await expire_in_database(database_url, expired["id"])
        forged = forge_key(active["prefix"][4:], "S" * 28)  # a real lookup id, not its secret
        lines = [active["key"], revoked["key"], expired["key"], generate_key().full, forged]
        (tmp_path / "leaks.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        result = await scan("--check", "leaks.txt", cwd=tmp_path, env=launcher.env())
        assert result.exit_code == 1, result.stderr
        assert [(f["line"], f["status"]) for f in findings(result)] == [
            (1, "active"),
            (2, "revoked"),
            (3, "expired"),
            (4, "unknown"),
            (5, "unknown"),
        ]
        for key in lines:
            assert key not in result.stdout and key not in result.stderr
