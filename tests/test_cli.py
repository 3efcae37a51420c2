"""The `registry` command: exact output and exit codes, on SQLite and PostgreSQL."""

from __future__ import annotations

import filecmp
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import SMALL_ARCH

from registry import Registry
from registry.cli import cli


def pushed(run, small_file: Path) -> dict:
    code, out, err = run(
        "push", str(small_file), "--arch", SMALL_ARCH, "--arg", "num_classes=10", "--json"
    )
    assert (code, err) == (0, "")
    return json.loads(out)


def test_push_prints_ref_and_digest(run, small_file: Path) -> None:
    code, out, err = run("push", str(small_file), "--arch", SMALL_ARCH, "--arg", "num_classes=10")
    digest = hashlib.sha256(small_file.read_bytes()).hexdigest()
    assert (code, out, err) == (0, f"{SMALL_ARCH}@v1 sha256:{digest}\n", "")


def test_push_json_uses_spec_field_names(run, small_file: Path) -> None:
    data = pushed(run, small_file)
    spec_fields = {
        "name", "version", "ref", "sha256", "size", "format", "arch", "arch_args", "tags",
        "aliases", "description", "created_at", "created_by", "num_params", "torch_version",
        "files",
    }  # fmt: skip
    assert spec_fields <= data.keys()
    assert data["files"] is None  # a single-file version (SPEC "Folders")
    assert (data["ref"], data["arch_args"], data["format"]) == (
        f"{SMALL_ARCH}@v1",
        {"num_classes": 10},
        "state_dict",
    )


def test_arg_values_are_json_when_they_parse(run, tiny_model, tmp_path: Path) -> None:
    import torch

    path = tmp_path / "tiny.pth"
    torch.save(tiny_model.state_dict(), path)
    code, out, err = run(
        "push", str(path), "--arch", "tiny_models:TinyNet", "--name", "tiny",
        "--arg", "width=4", "--arg", "num_classes=5", "--tag", "note=a=b", "--json",
    )  # fmt: skip
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert (data["arch_args"], data["tags"]) == ({"width": 4, "num_classes": 5}, {"note": "a=b"})


def test_pull_writes_bit_exact_file_and_prints_path(run, small_file: Path, tmp_path: Path) -> None:
    pushed(run, small_file)
    assert run("pull", f"{SMALL_ARCH}@v1") == (0, f"{SMALL_ARCH}-v1.pth\n", "")
    assert filecmp.cmp(small_file, tmp_path / f"{SMALL_ARCH}-v1.pth", shallow=False)
    target = tmp_path / "copy.pth"
    assert run("pull", SMALL_ARCH, "-o", str(target)) == (0, f"{target}\n", "")
    assert filecmp.cmp(small_file, target, shallow=False)


def test_load_reports_params_and_output_shape(run, small_file: Path) -> None:
    data = pushed(run, small_file)
    code, out, err = run("load", f"{SMALL_ARCH}@v1", "--input-shape", "1,3,64,64")
    assert (code, err) == (0, "")
    assert out == (
        f"{SMALL_ARCH}@v1: torchvision.models.shufflenetv2.ShuffleNetV2, "
        f"{data['num_params']:,} parameters, eval mode\noutput shape: [1, 10]\n"
    )
    code, out, _ = run("load", SMALL_ARCH, "--json", "--input-shape", "2,3,32,32")
    assert json.loads(out)["output_shape"] == [2, 10] and json.loads(out)["training"] is False


def test_load_input_shape_follows_the_check_input_rule_and_cap(run, small_file: Path) -> None:
    """A shape of over 2**28 elements is a typo: refused before the model is even read."""
    pushed(run, small_file)
    code, out, err = run("load", SMALL_ARCH, "--input-shape", "64,3,4096,4096")
    assert (code, out) == (2, "")
    assert "Invalid value for '--input-shape': input shape [64, 3, 4096, 4096] has more " in err
    code, _, err = run("load", SMALL_ARCH, "--input-shape", "0,3")
    assert code == 2 and "input shape '0,3' is not a shape" in err
    code, out, err = run("load", SMALL_ARCH, "--input-shape", "1,5")  # wrong for a conv net
    assert (code, out) == (1, "")
    assert err.startswith("Error: forward pass on input of shape [1, 5] failed: RuntimeError: ")
    assert err.count("\n") == 1


def test_ls_and_show(run, small_file: Path) -> None:
    data = pushed(run, small_file)
    day = data["created_at"][:10]
    _, out, _ = run("ls")
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "VERSIONS", "LATEST", "SIZE", "UPDATED", "ALIASES"]
    assert lines[1].split()[:6] == [SMALL_ARCH, "1", "v1", f"{data['size'] / 1e6:.1f}", "MB", day]
    _, out, _ = run("ls", SMALL_ARCH)
    assert out.splitlines()[1].split()[:6] == [
        f"{SMALL_ARCH}@v1",
        data["sha256"][:12],
        f"{data['size'] / 1e6:.1f}",
        "MB",
        SMALL_ARCH,
        day,
    ]
    assert json.loads(run("ls", "--json")[1]) == [
        {
            "name": SMALL_ARCH,
            "num_versions": 1,
            "latest_version": 1,
            "updated_at": data["created_at"],
            "size": data["size"],
            "aliases": [],
        }
    ]
    assert json.loads(run("ls", SMALL_ARCH, "--json")[1]) == [data]
    assert json.loads(run("show", f"{SMALL_ARCH}@v1", "--json")[1]) == data
    _, out, _ = run("show", SMALL_ARCH)
    fields = dict(line.split(":", 1) for line in out.splitlines())
    assert fields["sha256"].strip() == data["sha256"]
    assert fields["arch_args"].strip() == '{"num_classes": 10}'
    assert fields["weights_sha256"].strip() == "null"


def test_empty_catalog_lists_nothing(run) -> None:
    assert run("ls") == (0, "NAME  VERSIONS  LATEST  SIZE  UPDATED  ALIASES\n", "")
    assert run("ls", "--json") == (0, "[]\n", "")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["show", "ghost"],
            "Error: model 'ghost' not found; see `registry ls` for the models there are\n",
        ),
        (["pull", "Bad@v1"], "Error: invalid model name 'Bad': "),
        (["show", "vgg16@v0"], "Error: invalid reference 'vgg16@v0': versions start at v1\n"),
    ],
)
def test_registry_errors_are_one_line_exit_1(run, args: list[str], message: str) -> None:
    code, out, err = run(*args)
    assert (code, out) == (1, "")
    assert err.startswith(message) and err.count("\n") == 1


def test_wrong_arch_garbage_and_missing_file(run, small_file: Path, tmp_path: Path) -> None:
    code, _, err = run("push", str(small_file), "--arch", SMALL_ARCH)
    assert code == 1
    assert err == (
        f"Error: weights do not fit arch '{SMALL_ARCH}': 2 mis-shaped keys "
        "(fc.weight [10, 1024] vs [1000, 1024], fc.bias [10] vs [1000]); "
        "pass the builder's arguments with --arg num_classes=10\n"
    )
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00" * 64)
    code, _, err = run("push", str(garbage), "--arch", SMALL_ARCH)
    assert (code, err) == (
        1,
        f"Error: {garbage} is not a checkpoint: expected a torch.save file or .safetensors, "
        "found bytes 0000000000000000\n",
    )
    code, _, err = run("push", str(tmp_path / "missing.pth"), "--arch", SMALL_ARCH)
    assert (code, err) == (1, f"Error: file '{tmp_path / 'missing.pth'}' not found\n")
    assert run("ls") == (0, "NAME  VERSIONS  LATEST  SIZE  UPDATED  ALIASES\n", "")


@pytest.mark.parametrize(
    "args",
    [["push", "x.pth"], ["push", "x.pth", "--arch", "vgg16", "--arg", "novalue"], ["frobnicate"],
     ["load", "vgg16", "--input-shape", "1,x"]],
)  # fmt: skip
def test_usage_errors_exit_2(run, args: list[str]) -> None:
    code, out, err = run(*args)
    assert code == 2 and out == "" and "Error" in err


def test_password_is_never_printed(tmp_path: Path) -> None:
    url = "postgresql://user:s3cret-pw@127.0.0.1:1/nowhere"
    result = CliRunner().invoke(cli, ["--database-url", url, "ls"])
    assert result.exit_code == 1
    assert "s3cret-pw" not in result.output and "***" in result.stderr
    assert result.stderr.count("\n") == 1


def test_debug_shows_the_traceback(run, monkeypatch: pytest.MonkeyPatch) -> None:
    from registry import NotFoundError

    monkeypatch.setenv("REGISTRY_DEBUG", "1")
    with pytest.raises(NotFoundError):
        run("show", "ghost")


def test_db_current_and_upgrade(run) -> None:
    assert run("db", "current") == (0, "none\n", "")
    code, out, _ = run("db", "upgrade")
    assert code == 0 and out.endswith("at revision 0009\n")
    assert run("db", "current") == (0, "0009\n", "")


def test_every_command_has_help() -> None:
    runner = CliRunner()
    commands = [[name] for name in cli.commands if name != "db"] + [
        ["db", "upgrade"],
        ["db", "current"],
    ]
    for command in [[], ["db"], *commands]:
        result = runner.invoke(cli, [*command, "--help"])
        assert result.exit_code == 0, command
        assert "Usage: " in result.output


def _installed(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "registry"), *args],
        capture_output=True, text=True, env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_installed_command_round_trip(small_file: Path, tmp_path: Path) -> None:
    push = _installed("push", str(small_file), "--arch", SMALL_ARCH, "--arg", "num_classes=10")
    assert push.returncode == 0 and push.stdout.startswith(f"{SMALL_ARCH}@v1 sha256:"), push.stderr
    pull = _installed("pull", f"{SMALL_ARCH}@v1", "-o", str(tmp_path / "back.pth"))
    assert pull.returncode == 0 and filecmp.cmp(small_file, tmp_path / "back.pth", shallow=False)
    missing = _installed("pull", "ghost")
    assert (missing.returncode, missing.stdout) == (1, "")
    assert (
        missing.stderr.startswith("Error: model 'ghost' not found")
        and "Traceback" not in missing.stderr
    )


def test_python_dash_m_registry() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "registry", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "Usage: registry" in result.stdout


def test_python_dash_m_registry_beside_a_folder_named_registry(tmp_path: Path) -> None:
    """`make demo`'s layout (issue 20): the home `./registry` is no package to import.

    Python puts the current folder first on sys.path, and a folder without
    `__init__.py` there became a namespace package `registry`, ahead of an
    editable install's import hook.
    """
    (tmp_path / "registry" / "blobs").mkdir(parents=True)
    for args in (
        ["--version"],
        ["--home", "registry", "ls"],
        ["--home", "registry", "db", "upgrade"],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "registry", *args], capture_output=True, text=True,
            cwd=tmp_path,
        )  # fmt: skip
        assert (result.returncode, result.stderr) == (0, ""), args


@pytest.mark.parametrize(
    "command",
    [
        ["ls"],
        ["ls", "tiny"],
        ["show", "tiny"],
        ["show", "tiny", "--tensors"],
        ["lineage", "tiny"],
        ["diff", "tiny@v1", "tiny@v1"],
        ["alias", "tiny@v1", "production"],
        ["tag", "tiny@v1", "stage=dev"],
        ["verify"],
        ["pull", "tiny"],
        ["rm", "tiny@v1"],
        ["gc"],
        ["db", "current"],
    ],
)
def test_metadata_commands_do_not_import_torch(tiny_model, command: list[str]) -> None:
    from registry import Registry

    Registry().push(
        tiny_model,
        arch="tiny_models:TinyNet",
        name="tiny",
        arch_args={"width": 4, "num_classes": 5},
    )
    heavy = ["torch", "torchvision", "safetensors"]
    if command[0] != "pull":  # a pull re-hashes the bytes it copies, by BLAKE3
        heavy.append("blake3")
    probe = (
        "import sys\n"
        "from registry.cli import cli\n"
        f"try:\n    cli({command!r}, prog_name='registry')\n"
        "except SystemExit as exit:\n    assert exit.code == 0, exit.code\n"
        f"heavy = {heavy!r}\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("total", "tty", "drawn"), [(60_000_000, True, True),
                                                       (60_000_000, False, False),
                                                       (1_000_000, True, False)])  # fmt: skip
def test_progress_bar_only_for_large_transfers_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, total: int, tty: bool, drawn: bool
) -> None:
    from registry.progress_bars import terminal

    stderr = FakeTerminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    with terminal("pull vgg16@v1", total) as advance:
        for _ in range(total // 8_000_000 + 1):
            advance(8_000_000)
    assert ("pull vgg16@v1" in stderr.getvalue()) == drawn


def test_every_result_printing_command_speaks_json(run, small_file: Path) -> None:
    data = pushed(run, small_file)
    ref = data["ref"]
    outputs = {
        "pull": run("pull", ref, "--json"),
        "alias": run("alias", ref, "production", "--json"),
        "tag": run("tag", ref, "k=v", "--json"),
        "verify": run("verify", "--json"),
        "gc": run("gc", "--dry-run", "--json"),
        "db current": run("db", "current", "--json"),
        "alias --delete": run("alias", "--delete", SMALL_ARCH, "production", "--json"),
        "rm": run("rm", ref, "--json"),
    }
    parsed = {name: json.loads(out) for name, (code, out, _) in outputs.items() if code == 0}
    assert parsed.keys() == outputs.keys()
    assert parsed["pull"]["path"] == f"{SMALL_ARCH}-v1.pth"
    assert parsed["alias"]["aliases"] == ["production"]
    assert parsed["tag"]["tags"] == {"k": "v"}
    assert parsed["verify"] == []
    assert parsed["db current"] == {"revision": "0009"}
    assert parsed["rm"]["ref"] == ref


def test_pull_to_standard_output_is_bit_exact(
    run, cli_reg: Registry, small_file: Path, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from registry.cli import cli

    version = cli_reg.push(small_file, arch=SMALL_ARCH, arch_args={"num_classes": 10})
    result = CliRunner().invoke(
        cli,
        ["--database-url", cli_reg.settings.database_url, "--store", str(tmp_path / "blobs"),
         "pull", version.ref, "-o", "-"],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert result.stdout_bytes == small_file.read_bytes()
    assert not Path("-").exists()


def test_push_has_an_option_for_every_keyword_of_registry_push_and_no_other() -> None:
    """`registry push` hands its options to `Registry.push` by name: they cannot drift apart."""
    import inspect

    options = {p.name for p in cli.commands["push"].params} - {"file", "as_json"}
    keywords = set(inspect.signature(Registry.push).parameters) - {"self", "source"}
    assert options == keywords
