"""A GGUF file's metadata keys (llama.cpp's format, versions 2 and 3), read without its tensors or torch.

gguf-py's `GGUFReader` builds a numpy view for every element of every field: 2.5 s for the embedded
model's 49,152 tokens and 48,900 merges. transformers' own metadata reader is as quick as this one, but
its package imports torch, which data prep's workers run without (tasks/data/engine.py). The format:
https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Container
from pathlib import Path

_VERSIONS = (2, 3)  # version 1 counted in 32 bits; no file in use still has it
_SCALARS = {  # value type -> struct format
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


class GGUFFormatError(ValueError):
    """A file that is not a GGUF file this reader understands; the message says what was found."""


def read_gguf_metadata(path: Path, string_arrays: Container[str] = ()) -> dict:
    """Every metadata key's value. A string array is kept whole only when its key is in `string_arrays`
    (a vocabulary, merges); any other is left as its length, which is all a caller needs of it."""
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as blob:
        if blob[:4] != b"GGUF":
            raise GGUFFormatError(f"{path} does not start with GGUF's magic bytes: not a GGUF file")
        version, _tensors, keys = struct.unpack_from("<IQQ", blob, 4)
        if version not in _VERSIONS:
            raise GGUFFormatError(f"{path} is GGUF version {version}; this reader reads versions 2 and 3")
        position, metadata = 24, {}
        try:
            for _ in range(keys):
                key, position = _string(blob, position)
                (value_type,) = struct.unpack_from("<I", blob, position)
                metadata[key], position = _value(blob, position + 4, value_type, key in string_arrays, path)
        except (struct.error, UnicodeDecodeError) as exc:
            raise GGUFFormatError(f"{path}: unreadable metadata after byte {position} ({exc})") from exc
        return metadata


def _value(blob: mmap.mmap, position: int, value_type: int, keep: bool, path: Path) -> tuple[object, int]:
    if value_type in _SCALARS:
        (value,) = struct.unpack_from(_SCALARS[value_type], blob, position)
        return value, position + struct.calcsize(_SCALARS[value_type])
    if value_type == _STRING:
        return _string(blob, position)
    if value_type != _ARRAY:
        raise GGUFFormatError(f"{path}: metadata value of unknown type {value_type} at byte {position}")
    element_type, count = struct.unpack_from("<IQ", blob, position)
    position += 12
    if element_type in _SCALARS:
        format_ = _SCALARS[element_type]
        values = struct.unpack_from(f"<{count}{format_[1]}", blob, position)
        return list(values), position + count * struct.calcsize(format_)
    if element_type != _STRING:
        raise GGUFFormatError(f"{path}: metadata array of type {element_type} at byte {position}")
    strings = []
    for _ in range(count):
        if keep:
            value, position = _string(blob, position)
            strings.append(value)
        else:
            (length,) = struct.unpack_from("<Q", blob, position)
            position += 8 + length
    return (strings if keep else count), position


def _string(blob: mmap.mmap, position: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<Q", blob, position)
    start = position + 8
    return blob[start : start + length].decode("utf-8"), start + length
