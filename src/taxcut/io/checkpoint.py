"""Lazy, header-first reading of a Hugging Face model folder's weights.

Opening a :class:`Checkpoint` reads only the safetensors headers (and validates them with ``safe_open`` as well as
against the file sizes), so planning a 70B merge takes a second. Tensor data is then read in byte ranges with
``os.preadv`` into buffers the caller owns: unlike memory-mapping, this keeps the process's resident memory flat
however large the model is. Legacy ``.bin`` files are read only through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from taxcut.errors import TaxcutError, first_line
from taxcut.io.adapter import LoraAdapter, is_adapter_folder
from taxcut.io.dtypes import SAFETENSORS_DTYPES
from taxcut.io.hub import resolve_model
from taxcut.io.layers import config_ties_embeddings

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"
_MAX_HEADER_BYTES = 100 * 2**20


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it is, known from headers alone."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    file: Path
    data_offset: int  # absolute byte offset of the data in ``file`` (0 for .bin files)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


@dataclass(frozen=True)
class WeightFile:
    path: Path
    size: int
    header_sha256: str  # a fast fingerprint: the header names every tensor, dtype, shape and offset


class Checkpoint:
    """The weights of one model folder, opened for header-only inspection and ranged reads.

    ``role`` ("sft", "aligned", ...) only serves to name the model in error messages.
    """

    def __init__(self, folder: str | Path, role: str = "model"):
        self.source = resolve_model(folder)  # a Hub ID (org/name[@revision]) becomes its snapshot in the cache
        self.folder = self.source.path
        self.role = role
        self.adapter = LoraAdapter(self.folder, role) if is_adapter_folder(self.folder) else None
        weights_folder = self.adapter.base_folder if self.adapter else self.folder  # an adapter reads through its base
        self.config = _read_config(weights_folder, role)
        self.files: list[WeightFile] = []
        self.tensors: dict[str, TensorInfo] = {}
        self._descriptors: dict[Path, int] = {}
        self._bin_state: dict[Path, dict[str, torch.Tensor]] = {}
        self._merged_cache: tuple[str, torch.Tensor] | None = None
        paths, index = _weight_files(weights_folder, role)
        for path in paths:
            if path.suffix == ".safetensors":
                self._add_safetensors(path)
            else:
                self._add_bin(path)
        if index is not None:
            _check_index(*index, weights_folder, self.tensors)
        if not self.tensors:
            raise TaxcutError(f"{self.folder}: the {role} model's weight files hold no tensors")
        if self.adapter is not None:
            self.adapter.check(
                {name: info.shape for name, info in self.tensors.items()}, tied=config_ties_embeddings(self.config)
            )
            adapter_file = self.adapter.weights_file  # the provenance fingerprint covers the adapter too
            header, header_bytes, _ = _read_safetensors_header(adapter_file)
            self.files.append(
                WeightFile(adapter_file, adapter_file.stat().st_size, hashlib.sha256(header_bytes).hexdigest())
            )

    @property
    def side_file_folders(self) -> list[Path]:
        """Where config and tokenizer files come from: the folder, or an adapter's base then the adapter."""
        return [self.adapter.base_folder, self.folder] if self.adapter else [self.folder]

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        for descriptor in self._descriptors.values():
            os.close(descriptor)
        self._descriptors.clear()
        self._bin_state.clear()

    def read_into(self, info: TensorInfo, start: int, stop: int, buffer: torch.Tensor) -> torch.Tensor:
        """Elements ``[start, stop)`` of the flattened tensor, read into the uint8 ``buffer``, typed as the tensor."""
        nbytes = (stop - start) * info.dtype.itemsize
        raw = buffer[:nbytes]
        if self.adapter is not None and self.adapter.applies_to(info.name):
            raw.view(info.dtype).copy_(self._adapter_tensor(info).reshape(-1)[start:stop])
        elif info.file.suffix == ".safetensors":
            _pread_exactly(self._descriptor(info.file), raw, info.data_offset + start * info.dtype.itemsize, info)
        else:
            raw.view(info.dtype).copy_(self._bin_state[info.file][info.name].reshape(-1)[start:stop])
        return raw.view(info.dtype)

    def _adapter_tensor(self, info: TensorInfo) -> torch.Tensor:
        """Base + adapter for one tensor, kept until another tensor is asked for (chunked reads reuse it)."""
        if self._merged_cache is None or self._merged_cache[0] != info.name:
            self._merged_cache = None
            base = torch.empty(info.nbytes, dtype=torch.uint8)
            if info.file.suffix == ".safetensors":
                _pread_exactly(self._descriptor(info.file), base, info.data_offset, info)
                base_tensor = base.view(info.dtype).reshape(info.shape)
            else:
                base_tensor = self._bin_state[info.file][info.name]
            self._merged_cache = (info.name, self.adapter.merged(info.name, base_tensor))
        return self._merged_cache[1]

    def read(self, info: TensorInfo) -> torch.Tensor:
        """A whole tensor (for small tensors and tests; the engine reads in chunks)."""
        buffer = torch.empty(info.nbytes, dtype=torch.uint8)
        return self.read_into(info, 0, info.numel, buffer).reshape(info.shape)

    def stored_bytes(self, info: TensorInfo, start: int, count: int) -> bytes:
        """``count`` bytes of a tensor's data as stored, from byte ``start`` (no adapter applied)."""
        if info.file.suffix == ".safetensors":
            raw = torch.empty(count, dtype=torch.uint8)
            _pread_exactly(self._descriptor(info.file), raw, info.data_offset + start, info)
            return raw.numpy().tobytes()
        flat = self._bin_state[info.file][info.name].contiguous().reshape(-1).view(torch.uint8)
        return flat[start : start + count].numpy().tobytes()

    def _descriptor(self, path: Path) -> int:
        if path not in self._descriptors:
            self._descriptors[path] = os.open(path, os.O_RDONLY)
        return self._descriptors[path]

    def _add_safetensors(self, path: Path) -> None:
        header, header_bytes, data_start = _read_safetensors_header(path)
        try:  # the library's own validation of the header, as a second opinion (reads no tensor data)
            with safe_open(path, framework="pt"):
                pass
        except (SafetensorError, OSError) as exc:
            raise TaxcutError(f"{path}: not a valid safetensors file ({exc}); re-download or re-save it") from None
        self.files.append(WeightFile(path, path.stat().st_size, hashlib.sha256(header_bytes).hexdigest()))
        entries = sorted(
            ((name, meta) for name, meta in header.items() if name != "__metadata__"),
            key=lambda item: item[1]["data_offsets"][0],
        )
        for name, meta in entries:
            self._add_tensor(
                TensorInfo(
                    name,
                    SAFETENSORS_DTYPES[meta["dtype"]],
                    tuple(meta["shape"]),
                    path,
                    data_start + meta["data_offsets"][0],
                )
            )

    def _add_bin(self, path: Path) -> None:
        try:
            with warnings.catch_warnings():  # torch warns about pickle protocols on stderr; the error says enough
                warnings.simplefilter("ignore")
                try:
                    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError as exc:
                    if "mmap" not in str(exc):
                        raise
                    state = torch.load(path, map_location="cpu", weights_only=True)  # legacy, non-zip format
        except Exception as exc:  # any unpickling failure is the file's fault
            raise TaxcutError(
                f"{path}: cannot load with torch.load(weights_only=True) ({_unpickling_reason(exc)}); taxcut reads "
                "nothing but plain tensors from a pickle — convert the checkpoint to safetensors"
            ) from None
        if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
            raise TaxcutError(f"{path}: expected a state dict of tensors; convert the checkpoint to safetensors")
        self._bin_state[path] = state
        header = json.dumps({k: [str(t.dtype), list(t.shape)] for k, t in state.items()}, sort_keys=True).encode()
        self.files.append(WeightFile(path, path.stat().st_size, hashlib.sha256(header).hexdigest()))
        for name, tensor in state.items():
            self._add_tensor(TensorInfo(name, tensor.dtype, tuple(tensor.shape), path, 0))

    def _add_tensor(self, info: TensorInfo) -> None:
        if info.name in self.tensors:
            raise TaxcutError(
                f"{info.file}: tensor '{info.name}' also stands in {self.tensors[info.name].file.name}; "
                "the checkpoint's shards overlap — re-save it"
            )
        self.tensors[info.name] = info


def _read_config(folder: Path, role: str) -> dict:
    if not folder.exists():
        raise TaxcutError(f"{folder}: the {role} model folder does not exist")
    if not folder.is_dir():
        raise TaxcutError(f"{folder}: the {role} model must be a folder (a Hugging Face model folder), not a file")
    path = folder / "config.json"
    if not path.is_file():
        raise TaxcutError(f"{folder}: no config.json, so the {role} model is not a Hugging Face model folder")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TaxcutError(f"{path}: not valid JSON ({exc}); restore the file") from None
    if not isinstance(config, dict):
        raise TaxcutError(f"{path}: expected a JSON object")
    if not isinstance(config.get("text_config", {}) or {}, dict):
        raise TaxcutError(f"{path}: 'text_config' must be a JSON object")
    return config


def _weight_files(folder: Path, role: str) -> tuple[list[Path], tuple[Path, dict[str, str]] | None]:
    """The weight files of a folder, from its index if it has one (safetensors preferred over .bin), and
    ``(index path, weight map)`` when there is an index."""
    for index_name, single_name in ((SAFETENSORS_INDEX, SAFETENSORS_SINGLE), (BIN_INDEX, BIN_SINGLE)):
        index_path = folder / index_name
        if index_path.is_file():
            weight_map = _read_weight_map(index_path)
            names = sorted(set(weight_map.values()))
            for name in names:
                _check_shard_name(index_path, name, folder)
            missing = [name for name in names if not (folder / name).is_file()]
            if missing:
                raise TaxcutError(f"{index_path}: lists {missing[0]}, which is not in the folder; copy it there")
            return sorted({folder / name for name in names}), (index_path, weight_map)
        if (folder / single_name).is_file():
            _check_single_file(folder / single_name, folder)
            return [folder / single_name], None
    raise TaxcutError(
        f"{folder}: no weights in the {role} model folder; expected {SAFETENSORS_SINGLE}, {SAFETENSORS_INDEX}, "
        f"{BIN_SINGLE} or {BIN_INDEX}"
    )


def _read_weight_map(index_path: Path) -> dict[str, str]:
    if index_path.stat().st_size > _MAX_HEADER_BYTES:
        raise TaxcutError(f"{index_path}: larger than {_MAX_HEADER_BYTES // 2**20} MB; not a weight index")
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("'weight_map' must be an object")
        if not all(isinstance(name, str) for name in weight_map.values()):
            raise TypeError("file names must be strings")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise TaxcutError(f"{index_path}: not a valid weight index ({exc!r}); re-save the model") from None
    return weight_map


def _lies_outside(folder: Path, name: str) -> bool:
    """Does the file ``name`` of ``folder`` lie outside it, symlinks resolved? The Hugging Face cache's links from a
    snapshot into its own repository's ``blobs`` folder count as inside."""
    if not name or Path(name).is_absolute() or ".." in Path(name).parts:
        return True
    root, target = folder.resolve(), (folder / name).resolve()
    in_cache_blobs = root.parent.name == "snapshots" and target.parent == root.parent.parent / "blobs"
    return not (target.is_relative_to(root) or in_cache_blobs)


def _check_single_file(path: Path, folder: Path) -> None:
    """A single weight file (``model.safetensors``, ``pytorch_model.bin``) must lie inside the model folder, as an
    index's shards must: a link out of it could make taxcut read (and unpickle, for ``.bin``) any file."""
    if _lies_outside(folder, path.name):
        raise TaxcutError(
            f"{path}: links to {path.resolve()}, outside the model folder; a model's weights must lie "
            "inside its own folder — copy the file there"
        )


def _check_shard_name(index_path: Path, name: str, folder: Path) -> None:
    """A shard named by an index must lie inside the model folder (see :func:`_lies_outside`)."""
    if _lies_outside(folder, name):
        raise TaxcutError(
            f"{index_path}: names shard {name!r}, which lies outside the model folder; an index may "
            "only name files inside its own folder — re-save the model"
        )


def _check_index(index_path: Path, weight_map: dict[str, str], folder: Path, tensors: dict[str, TensorInfo]) -> None:
    """Every tensor the index names stands in the shard it names, and every tensor of the shards is in the index."""
    for name, shard in weight_map.items():
        info = tensors.get(name)
        if info is None:
            raise TaxcutError(
                f"{index_path}: names tensor '{name}' in {shard}, but {shard} does not hold it; "
                "restore the shard or re-save the model"
            )
        if info.file != folder / shard:
            raise TaxcutError(
                f"{index_path}: names tensor '{name}' in {shard}, but it stands in {info.file.name}; re-save the model"
            )
    for name, info in tensors.items():
        if name not in weight_map:
            raise TaxcutError(
                f"{info.file}: holds tensor '{name}', which {index_path.name} does not list; re-save the model"
            )


def _unpickling_reason(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, without torch's advice to unpickle it anyway."""
    text = str(exc).strip()
    if not text.startswith("Weights only load failed"):
        return first_line(exc)
    for line in text.splitlines()[1:]:
        line = line.split("WeightsUnpickler error:", 1)[-1].strip()
        line = line.split(" Please use", 1)[0].strip()
        if line and "weights_only" not in line and not line.startswith(("Check the documentation", "Please")):
            return line.rstrip(".")
    return "it holds objects other than tensors"


def _read_safetensors_header(path: Path) -> tuple[dict, bytes, int]:
    """Parse and check a safetensors header against the file size; return it, its bytes and the data start."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise TaxcutError(f"{path}: truncated safetensors file ({size} bytes); re-download or re-save it")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(_MAX_HEADER_BYTES, size - 8):
            raise TaxcutError(f"{path}: corrupt or truncated safetensors header; re-download or re-save it")
        header_bytes = handle.read(header_len)
    try:
        header = json.loads(header_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise TaxcutError(f"{path}: corrupt safetensors header (not JSON); re-download or re-save it") from None
    if not isinstance(header, dict):
        raise TaxcutError(f"{path}: corrupt safetensors header (not a JSON object); re-download or re-save it")
    data_start = 8 + header_len
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = SAFETENSORS_DTYPES[meta["dtype"]]
            begin, end = (int(x) for x in meta["data_offsets"])
            expected = math.prod(int(dim) for dim in meta["shape"]) * dtype.itemsize
        except (KeyError, TypeError, ValueError):
            raise TaxcutError(
                f"{path}: tensor '{name}' has an unreadable or unsupported header entry {meta!r}; re-save the model"
            ) from None
        if end - begin != expected:
            raise TaxcutError(f"{path}: tensor '{name}': its byte range does not match its shape; re-save the model")
        if data_start + end > size:
            raise TaxcutError(
                f"{path}: truncated: tensor '{name}' ends at byte {data_start + end} but the file has {size} bytes; "
                "re-download or re-save it"
            )
    return header, header_bytes, data_start


def _pread_exactly(descriptor: int, raw: torch.Tensor, offset: int, info: TensorInfo) -> None:
    view = memoryview(raw.numpy()).cast("B")
    done = 0
    while done < len(view):
        count = os.preadv(descriptor, [view[done:]], offset + done)
        if count == 0:
            raise TaxcutError(f"{info.file}: ended while reading tensor '{info.name}'; the file is truncated")
        done += count
