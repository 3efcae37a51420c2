"""folders: which files a folder version holds, its digest (SPEC "Folders"), and its kind."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from registry import folders, hf
from registry.errors import CheckpointError
from registry.folders import default_name, digest, file_list, kind, scan
from registry.records import FolderFile


def write(folder: Path, files: dict[str, bytes]) -> Path:
    for relative, data in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


def hashed(folder: Path) -> list[FolderFile]:
    return [
        FolderFile(f.path, f.size, hashlib.sha256((folder / f.path).read_bytes()).hexdigest())
        for f in scan(folder)
    ]


# -- which files ------------------------------------------------------------------------------


def test_every_regular_file_by_its_slash_separated_path_sorted_by_utf8(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "ckpt", {"b.bin": b"bb", "a/z.json": b"{}", "a/é.txt": b"e", "Z": b""}
    )
    found = scan(folder)
    # Sorted by the paths' UTF-8 bytes: "Z" < "a/z.json" < "a/é.txt" < "b.bin".
    assert [(f.path, f.size) for f in found] == [
        ("Z", 0), ("a/z.json", 2), ("a/\u00e9.txt", 1), ("b.bin", 2),
    ]  # fmt: skip


@pytest.mark.parametrize("link", ["file", "folder"])
def test_a_symlink_is_refused_whether_to_a_file_or_a_folder(tmp_path: Path, link: str) -> None:
    folder = write(tmp_path / "ckpt", {"model.safetensors": b"x"})
    outside = write(tmp_path / "outside", {"secret.txt": b"s"})
    target = outside / "secret.txt" if link == "file" else outside
    (folder / "escape").symlink_to(target)
    with pytest.raises(CheckpointError, match="escape is a symlink"):
        scan(folder)


def test_a_pipe_or_socket_is_refused(tmp_path: Path) -> None:
    folder = write(tmp_path / "ckpt", {"model.safetensors": b"x"})
    os.mkfifo(folder / "pipe")
    with pytest.raises(CheckpointError, match="pipe is not a regular file"):
        scan(folder)
    (folder / "pipe").unlink()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(folder / "sock"))
        with pytest.raises(CheckpointError, match="sock is not a regular file"):
            scan(folder)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("two\nlines", "control character"),
        ("esc\x1b[31m", "control character"),
        ("back\\slash", "backslash"),
    ],
)
def test_a_path_that_would_break_the_file_list_is_refused(
    tmp_path: Path, name: str, message: str
) -> None:
    folder = write(tmp_path / "ckpt", {"model.safetensors": b"x", name: b"y"})
    with pytest.raises(CheckpointError, match=message):
        scan(folder)


def test_a_file_name_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    folder = write(tmp_path / "ckpt", {"model.safetensors": b"x"})
    (Path(os.fsdecode(os.fsencode(folder) + b"/bad\xff"))).write_bytes(b"y")
    with pytest.raises(CheckpointError, match="not UTF-8"):
        scan(folder)


def test_an_empty_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ckpt" / "sub").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="holds no files"):
        scan(tmp_path / "ckpt")


# -- the digest ---------------------------------------------------------------------------------


def test_the_digest_is_the_sha256_of_the_file_list_spec_defines(tmp_path: Path) -> None:
    folder = write(tmp_path / "ckpt", {"config.json": b"{}", "model.safetensors": b"weights"})
    files = hashed(folder)
    expected = (
        f"{hashlib.sha256(b'{}').hexdigest()}  2  config.json\n"
        f"{hashlib.sha256(b'weights').hexdigest()}  7  model.safetensors\n"
    ).encode()
    assert file_list(files) == expected
    assert file_list(reversed(files)) == expected  # the order given does not matter
    assert digest(files) == hashlib.sha256(expected).hexdigest()


def test_the_digest_changes_with_any_path_size_or_byte(tmp_path: Path) -> None:
    base = hashed(write(tmp_path / "a", {"x/one.bin": b"1", "two.bin": b"22"}))
    renamed = hashed(write(tmp_path / "b", {"x/uno.bin": b"1", "two.bin": b"22"}))
    changed = hashed(write(tmp_path / "c", {"x/one.bin": b"9", "two.bin": b"22"}))
    assert len({digest(base), digest(renamed), digest(changed)}) == 3


def test_a_file_not_hashed_yet_has_no_digest() -> None:
    with pytest.raises(ValueError, match=r"not hashed yet: a\.bin"):
        digest([FolderFile("a.bin", 1)])


# -- the kind -----------------------------------------------------------------------------------


def weights() -> bytes:
    """A real safetensors file of one tensor."""
    return save({"w": torch.ones(2, 2)})


def config(**fields: object) -> bytes:
    return json.dumps(fields).encode()


KIND_CASES = {
    "transformers": {"config.json": config(architectures=["BertModel"]), "model.safetensors": b""},
    "transformers-sharded": {
        "config.json": config(architectures=["LlamaForCausalLM"]),
        "model.safetensors.index.json": config(
            weight_map={"w": "model-00001-of-00002.safetensors"}
        ),
        "model-00001-of-00002.safetensors": b"",
    },
    "transformers-bin": {
        "config.json": config(architectures=["GPT2Model"]),
        "pytorch_model.bin": b"",
    },
    "hub_mixin": {"config.json": config(width=4), "model.safetensors": b""},
    "peft": {"adapter_config.json": config(r=8), "adapter_model.safetensors": b""},
    "sharded": {
        "weights.index.json": config(weight_map={"w": "part-1.safetensors"}),
        "part-1.safetensors": b"",
    },
    "folder": {"notes.txt": b"hello", "config.json": b"not json"},
    "folder-index-without-map": {"x.index.json": config(other=1), "x.safetensors": b""},
}


@pytest.mark.parametrize("case", KIND_CASES)
def test_the_kind_is_told_from_the_content(tmp_path: Path, case: str) -> None:
    files = {k: v or weights() for k, v in KIND_CASES[case].items()}
    folder = write(tmp_path / "ckpt", files)
    assert kind(folder, scan(folder)) == case.split("-")[0]


def test_a_dcp_folder_written_by_torch_is_told_apart(tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():  # no process group: torch warns and saves on this rank
        warnings.simplefilter("ignore")
        dcp.save({"model": {"w": torch.ones(2)}}, checkpoint_id=tmp_path / "dcp")
    assert kind(tmp_path / "dcp", scan(tmp_path / "dcp")) == "dcp"


def test_a_config_too_large_to_be_one_is_not_read(tmp_path: Path) -> None:
    from registry import folders

    big = b'{"architectures": ["BertModel"], "pad": "' + b"x" * folders.MAX_CONFIG_BYTES + b'"}'
    folder = write(tmp_path / "ckpt", {"config.json": big, "model.safetensors": weights()})
    assert kind(folder, scan(folder)) == "folder"


@pytest.mark.parametrize(
    ("class_name", "name"),
    [
        ("BertForSequenceClassification", "bert-for-sequence-classification"),
        ("GPT2LMHeadModel", "gpt2-lm-head-model"),
        ("T5ForConditionalGeneration", "t5-for-conditional-generation"),
        ("CLIPModel", "clip-model"),
        ("XLMRobertaModel", "xlm-roberta-model"),
        ("LlamaForCausalLM", "llama-for-causal-lm"),
    ],
)
def test_the_default_name_is_the_class_in_model_name_form(class_name: str, name: str) -> None:
    assert default_name(class_name) == name


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 100_000, "config.json is not JSON"),  # nested past the parser's depth
        ("[1, 2]", "config.json holds a list, not a JSON object"),
        ("{", "config.json is not JSON"),
    ],
)
def test_a_folder_json_file_that_is_not_an_object_is_one_checkpoint_error(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "blob"
    path.write_text(text)
    with pytest.raises(CheckpointError, match=message):
        folders.read_json("config.json", path)
    with pytest.raises(CheckpointError, match=message):  # what hf reads config.json with
        hf.config_data({"config.json": path}, trusted=False)
