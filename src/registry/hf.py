"""Rebuild Hugging Face folders (transformers models, PEFT LoRA adapters) as data.

A folder version's files are content-addressed blobs, so every function here
takes `files`: the folder's relative paths (`config.json`,
`model-00001-of-00002.safetensors`, `adapter_model.safetensors`) mapped to
local paths whose names are not the original ones. Nothing in a folder is
imported or run:

- config.json is parsed as JSON into transformers' own config class; a folder
  that asks for its own code (`auto_map`, a `model_type` transformers does
  not know) or for quantised weights is refused, and the keys that make
  transformers fetch attention kernels from the hub are dropped.
- The model class is one of transformers' own, named by the arch
  `transformers:<Class>`; another `module:Class` is used only when trusted.
- The model is built with its parameters on meta (no weight initialisation)
  and the checkpoint's tensors, memory-mapped, are assigned into it.
  Tensors no file carries (non-persistent buffers, keys transformers lets a
  checkpoint lack) are filled in by the model's own `_init_weights`, as
  `from_pretrained` does, so the result equals `from_pretrained` bit for bit.
- A model whose on-disk keys need transformers' weight conversions (the MoE
  models, Mixtral and others) is loaded by `from_pretrained` itself, on a
  temporary folder of links named as the original files, offline.
- A LoRA adapter's config is data too; one that would import code or
  rewrite the base weights when loaded is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, cast

from registry import folders, shards
from registry.errors import (
    ArchitectureError,
    ArchitectureMismatchError,
    CheckpointError,
    RegistryError,
    UntrustedArchError,
    first_line,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

TRANSFORMERS_PREFIX = "transformers:"

# config.json keys that make transformers fetch and import kernel code from the hub.
_IMPLEMENTATION_KEYS = (
    "attn_implementation",
    "experts_implementation",
    "_attn_implementation",
    "_experts_implementation",
)
# init_lora_weights values that leave the base alone; the others (pissa, olora, corda,
# loftq, eva, lora_ga, ...) rerun an initialisation on load that rewrites the base weights.
_SAFE_LORA_INITS = (True, False, "gaussian", "orthogonal")
_ADAPTER_NAME = "default"
_PEFT_PREFIX = "base_model.model."


def offline() -> None:
    """Keep huggingface_hub and transformers off the network from here on.

    Call it before importing them: huggingface_hub reads HF_HUB_OFFLINE once,
    when its constants module is imported, so that module's flag is set too
    if it is already loaded.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    constants: Any = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True


def require(needed_by: str) -> None:
    """Set the Hub offline, then import the hf extra or say in one line which to install."""
    from registry import extras

    offline()
    extras.require("hf", needed_by)


# -- config.json ------------------------------------------------------------------------


def _json_file(files: Mapping[str, Path], name: str) -> dict[str, Any]:
    """One of the folder's JSON files, parsed, as a dict."""
    path = files.get(name)
    if path is None:
        raise CheckpointError(f"the folder has no {name}")
    return folders.read_json(name, path)


def config_data(files: Mapping[str, Path], trusted: bool) -> dict[str, Any]:
    """config.json as data, refused where it asks for code or quantised weights.

    `trusted` lets through an `auto_map` and a `model_type` transformers does
    not know (a user's own PreTrainedModel subclass); the folder's code is
    never run either way.
    """
    data = _json_file(files, "config.json")
    if "auto_map" in data and not trusted:
        raise CheckpointError(
            f"config.json has an auto_map ({_short(data['auto_map'])}): the folder wants its "
            "own Python code run, which the registry never does; to build it with an installed "
            "class instead, pass --trust-arch (trust_arch=True)"
        )
    if data.get("quantization_config") is not None:
        method = data["quantization_config"]
        method = method.get("quant_method", "?") if isinstance(method, dict) else method
        raise CheckpointError(
            f"config.json has a quantization_config ({_short(method)}): quantised folders "
            "are not supported; push the unquantised model"
        )
    model_type = data.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise CheckpointError("config.json has no model_type: not a transformers config")
    if not trusted:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        if model_type not in CONFIG_MAPPING:
            raise CheckpointError(
                f"config.json model_type {model_type!r} is not one transformers knows, so the "
                "model needs code of its own; name your installed class as the arch and pass "
                "--trust-arch (trust_arch=True)"
            )
    for key in _IMPLEMENTATION_KEYS:
        data.pop(key, None)
    return data


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def arch_of(config: Mapping[str, Any]) -> str:
    """The arch a config names: `transformers:` and its first architecture."""
    architectures = config.get("architectures")
    if not isinstance(architectures, list) or not architectures:
        raise CheckpointError("config.json names no architectures; cannot tell the model class")
    name = architectures[0]
    if not isinstance(name, str) or not name.isidentifier():
        raise CheckpointError(f"config.json architectures[0] {name!r} is not a class name")
    return TRANSFORMERS_PREFIX + name


# -- the model class and the build ------------------------------------------------------


def model_class(arch: str, trusted: bool) -> type:
    """The PreTrainedModel subclass an arch names.

    `transformers:<Class>` is one of transformers' own; any other
    `module:Class` is a user's class and is imported only when trusted.
    """
    require(f"arch {arch!r}")
    from transformers import PreTrainedModel

    if arch.startswith(TRANSFORMERS_PREFIX):
        name = arch[len(TRANSFORMERS_PREFIX) :]
        import transformers

        cls = getattr(transformers, name, None) if name.isidentifier() else None
        if not (
            isinstance(cls, type)
            and issubclass(cls, PreTrainedModel)
            and cls.__module__.startswith("transformers.models.")
        ):
            raise ArchitectureError(
                f"arch {arch!r}: transformers {transformers.__version__} has no model class "
                f"{name!r}"
            )
        return cls
    if not trusted:
        raise UntrustedArchError(arch, "class outside transformers")
    from registry.architectures import resolve

    target = resolve(arch, trust=True).builder
    if not (isinstance(target, type) and issubclass(target, PreTrainedModel)):
        raise ArchitectureError(f"arch {arch!r} is not a transformers PreTrainedModel subclass")
    return target


def _config_object(cls: type, config: Mapping[str, Any]) -> Any:
    """The config instance `cls` takes, made from `config` as data, no kernel from the hub."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = config.get("model_type")
    config_class = getattr(cls, "config_class", None)
    if isinstance(model_type, str) and model_type in CONFIG_MAPPING:
        config_class = CONFIG_MAPPING[model_type]
        wanted = getattr(cls, "config_class", None)
        if isinstance(wanted, type) and not issubclass(config_class, wanted):
            raise ArchitectureError(
                f"{cls.__name__} takes a {wanted.__name__}, but config.json's model_type "
                f"{model_type!r} is a {config_class.__name__}"
            )
    if config_class is None:
        raise ArchitectureError(f"{cls.__name__} has no config_class")
    try:
        data = {k: v for k, v in config.items() if k not in _IMPLEMENTATION_KEYS}
        return config_class.from_dict(json.loads(json.dumps(data)))
    except Exception as exc:
        raise CheckpointError(
            f"config.json does not make a {config_class.__name__}: "
            f"{type(exc).__name__}: {first_line(exc)}"
        ) from None


@contextlib.contextmanager
def _one_line(what: str, error: type[RegistryError] = ArchitectureError) -> Iterator[None]:
    """Turn whatever goes wrong while doing `what` into one registry error line."""
    from registry.architectures import _NetworkUse

    try:
        yield
    except RegistryError:
        raise
    except _NetworkUse as exc:
        raise ArchitectureError(
            f"{what} tried to reach the network ({exc}); the registry never downloads"
        ) from None
    except Exception as exc:
        raise error(f"{what} failed: {type(exc).__name__}: {first_line(exc)}") from None


def build(cls: type, config: Mapping[str, Any]) -> nn.Module:
    """`cls` built from `config` with its parameters on meta, its buffers computed, no init."""
    from registry.architectures import _empty_weights, _offline

    require(f"building {cls.__name__}")
    config_object = _config_object(cls, config)
    with _one_line(f"building {cls.__name__}"), _offline(), _empty_weights(), _no_init():
        model: nn.Module = cls._from_config(config_object)  # type: ignore[attr-defined]
    return model


def _no_init() -> contextlib.AbstractContextManager[object]:
    """transformers' own switch that skips initialising weights the checkpoint replaces
    (as from_pretrained does); on meta they cost no memory, but a third of a build's time."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4
        return contextlib.nullcontext()
    return cast("contextlib.AbstractContextManager[object]", no_init_weights())


# -- which tensors a checkpoint holds ---------------------------------------------------


def _conversions(model: Any) -> list[Any]:
    """The weight conversions transformers applies to `model`'s checkpoint keys when loading."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
    except ImportError:  # transformers 4: checkpoints are stored as the model holds them
        return []
    return list(get_model_conversion_mapping(model, add_legacy=False))


def checkpoint_names(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """The tensor names and shapes `model.save_pretrained` would write, tied targets included."""
    state = {k: v.to("meta") for k, v in model.state_dict().items()}
    if _conversions(model):
        from transformers.core_model_loading import revert_weight_conversion

        with _one_line(f"listing {type(model).__name__}'s checkpoint names"):
            state = dict(revert_weight_conversion(cast(Any, model), state))
    return {k: tuple(v.shape) for k, v in state.items()}


def _tied_targets(model: nn.Module) -> set[str]:
    """The names save_pretrained leaves out because they are tied to another."""
    tied = getattr(model, "all_tied_weights_keys", None)
    if tied is None:  # transformers 4: a list of names
        tied = getattr(model, "_tied_weights_keys", None) or ()
    return set(tied)


def _patterns(values: Any) -> list[re.Pattern[str]]:
    return [re.compile(p) for p in (values or ())]


def fit(model: nn.Module, shapes: Mapping[str, tuple[tuple[int, ...], str]], arch: str) -> None:
    """Check a checkpoint's tensors (name -> (shape, dtype)) against `model` as transformers does.

    Tied targets and `_keys_to_ignore_on_load_missing` may be missing;
    `_keys_to_ignore_on_load_unexpected`, old rotary `inv_freq` and
    `position_ids` buffers may be unexpected.
    """
    expected = checkpoint_names(model)
    tied = _tied_targets(model)
    ignore_missing = _patterns(getattr(model, "_keys_to_ignore_on_load_missing", None))
    ignore_unexpected = _patterns(getattr(model, "_keys_to_ignore_on_load_unexpected", None))
    buffers = [name for name, _ in model.named_buffers()]
    if any(name.endswith("rotary_emb.inv_freq") for name in buffers):
        ignore_unexpected.append(re.compile(r"rotary_emb\.inv_freq"))
    if any(name.endswith("position_ids") for name in buffers):
        ignore_unexpected.append(re.compile(r"(^|\.)position_ids$"))
    missing = [
        k
        for k in expected
        if k not in shapes and k not in tied and not any(p.search(k) for p in ignore_missing)
    ]
    unexpected = [
        k for k in shapes if k not in expected and not any(p.search(k) for p in ignore_unexpected)
    ]
    mis_shaped = [
        (k, tuple(shapes[k][0]), want)
        for k, want in expected.items()
        if k in shapes and tuple(shapes[k][0]) != want
    ]
    if missing or unexpected or mis_shaped:
        raise ArchitectureMismatchError(arch, missing, unexpected, mis_shaped)


# -- the weights ------------------------------------------------------------------------


def weights(files: Mapping[str, Path]) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors as stored, across every shard, memory-mapped."""
    return shards.state_dict("transformers", files)


# -- loading a model --------------------------------------------------------------------


def load(arch: str, files: Mapping[str, Path], trusted: bool) -> nn.Module:
    """The model a save_pretrained folder holds, equal to `from_pretrained`, in eval mode."""
    require(f"loading arch {arch!r}")
    config = config_data(files, trusted)
    cls = model_class(arch, trusted)
    model = build(cls, config)
    state = weights(files)
    fit(model, {k: (tuple(v.shape), str(v.dtype)) for k, v in state.items()}, arch)
    if _conversions(model):
        return _from_pretrained(cls, config, files, arch)
    with _one_line(f"loading the weights into arch {arch!r}"):
        expected = model.state_dict().keys()
        model.load_state_dict(
            {k: v for k, v in state.items() if k in expected}, strict=False, assign=True
        )
        model.tie_weights()  # type: ignore[operator]
        _materialise_meta(model)
        _generation_config(model, files, config)
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise ArchitectureError(
            f"arch {arch!r}: {', '.join(left[:5])} came neither from the checkpoint nor from "
            "the model's own initialisation"
        )
    return model.eval()


def _materialise_meta(model: nn.Module) -> None:
    """Fill the tensors still on meta the way from_pretrained does.

    Each is made real and empty, then the `_init_weights` of the nearest
    PreTrainedModel above its module runs on that module; the module's
    loaded tensors are swapped out meanwhile so init cannot overwrite them.
    """
    import torch
    from transformers import PreTrainedModel

    owners: dict[str, Any] = {}
    for name, module in model.named_modules():
        parent = name.rpartition(".")[0] if name else None
        owners[name] = (
            module if isinstance(module, PreTrainedModel) else owners.get(parent or "", model)
        )
    for name, module in model.named_modules():
        tables: list[dict[str, Any]] = [module._parameters, module._buffers]
        if not any(t is not None and t.is_meta for d in tables for t in d.values()):
            continue
        kept = {
            (i, n): t
            for i, d in enumerate(tables)
            for n, t in d.items()
            if t is not None and not t.is_meta
        }
        for i, d in enumerate(tables):
            for n, t in list(d.items()):
                if t is not None:
                    fresh = torch.empty_like(t, device="cpu")
                    d[n] = torch.nn.Parameter(fresh, t.requires_grad) if i == 0 else fresh
        with torch.no_grad():
            owners[name]._init_weights(module)
        for (i, n), t in kept.items():
            tables[i][n] = t


def _generation_config(
    model: nn.Module, files: Mapping[str, Path], config: Mapping[str, Any]
) -> None:
    """The generation config from_pretrained gives a model that generates.

    It is generation_config.json where the folder has one, else made from config.json.
    """
    can_generate = getattr(model, "can_generate", None)
    if not (callable(can_generate) and can_generate()):
        return
    generation_class: Any = type(model.generation_config)
    if "generation_config.json" not in files:
        generation = generation_class.from_model_config(json.loads(json.dumps(config)))
    else:
        generation = generation_class.from_dict(_json_file(files, "generation_config.json"))
        generation._original_object_hash = hash(generation)  # as from_pretrained marks it
    model.generation_config = generation


# Files from_pretrained reads besides the weights; anything else (adapter_config.json,
# custom_generate/, *.py) is left out of the folder it sees.
_FALLBACK_FILES = ("config.json", "generation_config.json")


def _from_pretrained(
    cls: type, config: Mapping[str, Any], files: Mapping[str, Path], arch: str
) -> nn.Module:
    """transformers' own loader, for checkpoints whose keys need its weight conversions."""
    from registry.architectures import _offline

    names = [n for n in _FALLBACK_FILES if n in files] + shards.weight_files("transformers", files)
    config_object = _config_object(cls, config)
    folder = Path(tempfile.mkdtemp(prefix="registry-hf-"))
    try:
        for name in dict.fromkeys(names):
            parts = PurePosixPath(name).parts
            if PurePosixPath(name).is_absolute() or ".." in parts or not parts:
                raise CheckpointError(f"the folder's file name {name!r} leaves the folder")
            link = folder.joinpath(*parts)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(Path(files[name]).resolve())
        with _one_line(f"loading arch {arch!r} with transformers", CheckpointError), _offline():
            model: nn.Module = cls.from_pretrained(  # type: ignore[attr-defined]
                str(folder), config=config_object, local_files_only=True, trust_remote_code=False
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return model.eval()


# -- PEFT adapters ----------------------------------------------------------------------


def adapter_config(files: Mapping[str, Path]) -> dict[str, Any]:
    """adapter_config.json as data; refused where loading would import code or rewrite the base."""
    data = _json_file(files, "adapter_config.json")
    peft_type = data.get("peft_type")
    if peft_type != "LORA":
        raise CheckpointError(
            f"adapter_config.json peft_type is {peft_type!r}: only LORA adapters are supported"
        )
    if data.get("megatron_config"):  # makes peft import the module megatron_core names
        raise CheckpointError(
            f"adapter_config.json has a megatron_config, which would import "
            f"{_short(data.get('megatron_core'))}; only plain LoRA adapters are supported"
        )
    init = data.get("init_lora_weights", True)
    if not any(
        init is safe or (isinstance(safe, str) and init == safe) for safe in _SAFE_LORA_INITS
    ):
        raise CheckpointError(
            f"adapter_config.json init_lora_weights {_short(init)} reruns an initialisation on "
            "load that rewrites the base weights; convert the adapter to plain LoRA first"
        )
    # Read only by AutoPeftModel (which imports parent_library and fetches the base): never here.
    for key in ("auto_mapping", "base_model_name_or_path", "revision"):
        data.pop(key, None)
    return data


def _adapter_weights(files: Mapping[str, Path]) -> dict[str, torch.Tensor]:
    if shards.ADAPTER_WEIGHTS not in files:
        raise CheckpointError(f"the adapter folder has no {shards.ADAPTER_WEIGHTS}")
    return shards.state_dict("peft", files)


def _arch_name(model: nn.Module) -> str:
    cls = type(model)
    if cls.__module__.startswith("transformers."):
        return TRANSFORMERS_PREFIX + cls.__name__
    return f"{cls.__module__}:{cls.__qualname__}"


def apply_adapter(base: nn.Module, files: Mapping[str, Path], merge: bool) -> nn.Module:
    """`base` with the folder's LoRA adapter injected (or merged), in eval mode.

    The adapter's layers are built on meta and its memory-mapped tensors
    assigned into them. `base` is changed in place. `merge=True` folds the
    adapter into the base weights and gives back the plain base class, as
    peft's `merge_and_unload` does.
    """
    require("applying a PEFT adapter")
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    from registry.architectures import _offline

    arch = _arch_name(base)
    data = adapter_config(files)
    state = {k.removeprefix(_PEFT_PREFIX): v for k, v in _adapter_weights(files).items()}
    with _one_line("reading adapter_config.json", CheckpointError):
        config = LoraConfig.from_peft_type(**data)  # type: ignore[no-untyped-call, unused-ignore]  # typed in peft 0.22
        config.inference_mode = True
    with _one_line(f"applying the adapter to arch {arch!r}", CheckpointError), _offline():
        model = inject_adapter_in_model(
            config, base, adapter_name=_ADAPTER_NAME, low_cpu_mem_usage=True
        )
        result = set_peft_model_state_dict(
            model, state, adapter_name=_ADAPTER_NAME, low_cpu_mem_usage=True
        )
    missing = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    unexpected = list(getattr(result, "unexpected_keys", None) or ())
    if missing or unexpected:
        raise ArchitectureMismatchError(
            arch, missing, unexpected, [], hint="the adapter was trained on another base"
        )
    if merge:
        if data.get("layer_replication"):
            raise CheckpointError("an adapter that replicates base layers cannot be merged")
        with _one_line(f"merging the adapter into arch {arch!r}", CheckpointError):
            model = _merge(model)
    return model.eval()


def _merge(model: nn.Module) -> nn.Module:
    """Fold every adapter layer into its base layer and unwrap it (peft's merge_and_unload)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    tuner_layers = [n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    names = [
        n
        for n, _ in model.named_modules()
        if n and not any(n.startswith(t + ".") for t in tuner_layers)
    ]
    for name in names:
        owner, _, attribute = name.rpartition(".")
        try:
            parent = model.get_submodule(owner)
            target = getattr(parent, attribute)
        except AttributeError:  # inside a module unwrapped already
            continue
        if hasattr(target, "unload_and_optionally_merge_module"):
            plain = target.unload_and_optionally_merge_module(
                merge=True, safe_merge=False, adapter_names=[_ADAPTER_NAME]
            )
        elif hasattr(target, "base_layer"):
            target.merge(adapter_names=[_ADAPTER_NAME])
            plain = target.get_base_layer()
        else:
            continue
        setattr(parent, attribute, plain)
    if hasattr(model, "peft_config"):
        del model.peft_config
    return model


# -- other ------------------------------------------------------------------------------


def is_pretrained_model(obj: object) -> bool:
    """Whether `obj` is a transformers PreTrainedModel (imports nothing not imported yet)."""
    modeling = sys.modules.get("transformers.modeling_utils")
    base = getattr(modeling, "PreTrainedModel", None)
    return isinstance(base, type) and isinstance(obj, base)


def save(model: nn.Module, folder: Path) -> None:
    """`model.save_pretrained(folder)`, offline."""
    offline()
    with _one_line(f"saving {type(model).__name__}", CheckpointError):
        model.save_pretrained(folder)  # type: ignore[operator]
