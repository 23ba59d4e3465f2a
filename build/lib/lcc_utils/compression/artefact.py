"""The ``.lcc`` artefact: a real file whose size proves the compression ratio.

Peer tools such as ``torch.nn.utils.prune`` or fake quantization keep fp32 tensors, so their
files never shrink. :func:`save_compressed` stores packed low-bit codes, bit masks or
indices and per-channel scales; :func:`load_compressed` rebuilds a model whose weights are
bit-identical to the simulated compressed model's.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lcc_utils.compression.quantization import _codes, _dequantize, _qmax
from lcc_utils.compression.size import (
    _FP32_BITS,
    CompressionReport,
    LayerReport,
    _check_model,
    _index_bits,
    _state_entries,
    arch_hash,
)
from lcc_utils.files import broken
from lcc_utils.paths import atomic_path

#: File extension of compressed artefacts (git-ignored under runs/).
ARTEFACT_SUFFIX = ".lcc"
_MAGIC = b"LCCZ"
_VERSION = 2  # 2: quantizer levels ("2^b" / "2^b-1") and per-tensor scales; 1 still reads
_CHECKSUM_BYTES = 32  # sha256 of everything before it


def _pack_uint(values: np.ndarray, nbits: int) -> bytes:
    """Pack unsigned integers (< 2**nbits) into a little-endian bit stream of nbits each."""
    v = np.asarray(values).reshape(-1)
    if nbits <= 8:
        # 8 codes of nbits fill exactly nbits bytes: build them in one uint64 per group
        n = len(v)
        groups = np.zeros((-(-n // 8)) * 8, np.uint64)
        groups[:n] = v
        groups = groups.reshape(-1, 8)
        word = np.zeros(len(groups), np.uint64)
        for i in range(8):
            word |= groups[:, i] << np.uint64(nbits * i)
        packed = word.astype("<u8").view(np.uint8).reshape(-1, 8)[:, :nbits].reshape(-1)
        return packed[: -(-n * nbits // 8)].tobytes()
    v32 = np.ascontiguousarray(v, dtype="<u4")
    bits = np.unpackbits(v32.view(np.uint8).reshape(-1, 4), axis=1, bitorder="little")
    return np.packbits(bits[:, :nbits].reshape(-1), bitorder="little").tobytes()


def _unpack_uint(buf: bytes, count: int, nbits: int) -> np.ndarray:
    """Inverse of :func:`_pack_uint`: ``count`` unsigned integers of ``nbits`` each."""
    raw = np.frombuffer(buf, np.uint8)
    if nbits <= 8:
        groups = -(-count // 8)
        padded = np.zeros(groups * nbits, np.uint8)
        padded[: len(raw)] = raw[: groups * nbits]
        full = np.zeros((groups, 8), np.uint8)
        full[:, :nbits] = padded.reshape(groups, nbits)
        word = full.view("<u8").reshape(-1)
        mask = np.uint64((1 << nbits) - 1)
        out = np.stack([(word >> np.uint64(nbits * i)) & mask for i in range(8)], axis=1)
        return out.reshape(-1)[:count].astype(np.uint32)
    bits = np.unpackbits(raw, bitorder="little")[: count * nbits]
    full = np.zeros((count, 32), np.uint8)
    full[:, :nbits] = bits.reshape(count, nbits)
    return np.packbits(full, axis=1, bitorder="little").view("<u4").reshape(-1)


def _encode_layer(w: torch.Tensor, lr: LayerReport) -> tuple[dict[str, Any], list[bytes]]:
    flat_w = w.detach().flatten()
    nz = flat_w != 0
    nnz = int(nz.sum())
    if nnz != lr.nnz:
        raise ValueError(f"layer {lr.name}: model has {nnz} non-zeros but the report says "
                         f"{lr.nnz}; pass the model returned together with this report")
    kind, _ = lr.storage()
    meta: dict[str, Any] = {"bits": lr.bits, "storage": kind, "nnz": nnz, "levels": lr.levels}
    blobs: list[bytes] = []
    sel = slice(None) if kind == "dense" else nz
    if lr.bits < _FP32_BITS:
        scales = torch.from_numpy(np.asarray(lr.scales, np.float32))
        codes = _codes(w.detach(), scales, lr.bits, lr.levels)
        if not torch.equal(_dequantize(codes, scales), w.detach().float()):
            raise ValueError(f"layer {lr.name}: weights are not the quantized values the "
                             f"report describes; was the model changed after compression?")
        c = codes.flatten()[sel].numpy().astype(np.int64)
        u = _to_unsigned(c, lr.bits, lr.levels)
        blobs.append(scales.numpy().astype("<f4").tobytes())
        blobs.append(_pack_uint(u, lr.bits))
    else:
        blobs.append(flat_w[sel].numpy().astype("<f4").tobytes())
    if kind == "bitmask":
        blobs.append(np.packbits(nz.numpy(), bitorder="little").tobytes())
    elif kind == "indices":
        idx = torch.nonzero(nz).flatten().numpy().astype(np.uint32)
        blobs.append(_pack_uint(idx, _index_bits(lr.numel)))
    return meta, blobs


def _to_unsigned(c: np.ndarray, bits: int, levels: str) -> np.ndarray:
    """Signed codes -> b-bit unsigned codes.

    1 bit: the sign; 2^b-1 grid: c + qmax in 0 .. 2^b - 2; 2^b grid (odd codes):
    (c + qmax) / 2 in 0 .. 2^b - 1.
    """
    if bits == 1:
        return (c > 0).astype(np.uint32)
    u = c + _qmax(bits, levels)
    return (u // 2 if levels == "2^b" else u).astype(np.uint32)


def _from_unsigned(u: np.ndarray, bits: int, levels: str) -> np.ndarray:
    if bits == 1:
        return np.where(u > 0, 1, -1)
    return (2 * u if levels == "2^b" else u) - _qmax(bits, levels)


def _decode_layer(meta: dict[str, Any], blobs: list[bytes], shape: tuple[int, ...]
                  ) -> torch.Tensor:
    numel = int(np.prod(shape))
    bits, kind, nnz = meta["bits"], meta["storage"], meta["nnz"]
    count = numel if kind == "dense" else nnz
    if kind == "dense":
        pos = np.arange(numel)
    elif kind == "bitmask":
        mask = np.unpackbits(np.frombuffer(blobs[-1], np.uint8), bitorder="little")[:numel]
        pos = np.flatnonzero(mask)
    else:
        pos = _unpack_uint(blobs[-1], nnz, _index_bits(numel)).astype(np.int64)
    if len(pos) != count:
        raise ValueError(f"corrupted artefact: mask of {meta['name']} has {len(pos)} entries, "
                         f"expected {count}")
    if bits < _FP32_BITS:
        scales = torch.from_numpy(np.frombuffer(blobs[0], "<f4").copy())
        u = _unpack_uint(blobs[1], count, bits).astype(np.int64)
        c = _from_unsigned(u, bits, meta.get("levels", "2^b-1"))
        codes = np.zeros(numel, np.int16)
        codes[pos] = c
        return _dequantize(torch.from_numpy(codes).view(shape), scales)
    vals = np.zeros(numel, np.float32)
    vals[pos] = np.frombuffer(blobs[0], "<f4")
    return torch.from_numpy(vals).view(shape)


def save_compressed(model: nn.Module, report: CompressionReport, path: str | os.PathLike,
                    model_name: str = "") -> Path:
    """Write the compressed model as a real ``.lcc`` file; returns its path.

    Layout: ``b"LCCZ"``, version (uint16), header length (uint32), zlib-compressed JSON
    header (model name, arch hash, every state-dict entry's name / shape / dtype / storage /
    byte ranges), the payload (per-channel fp32 scales, packed low-bit codes, packed bit mask
    or packed indices of each compressed weight; raw little-endian bytes of every other
    tensor), then the sha256 of everything before it. Written atomically
    (:func:`lcc_utils.paths.atomic_path`): a reader never sees a half-written artefact.

    Args:
        model: the simulated compressed model returned with ``report``.
        report: its :class:`CompressionReport`.
        path: destination (``.lcc`` by convention).
        model_name: free-text name recorded in the header (e.g. the timm name).

    """
    _check_model(model)
    if not isinstance(report, CompressionReport):
        raise TypeError(f"report must be a CompressionReport, got {type(report).__name__}")
    path = Path(path)
    state = model.state_dict()
    if [(k, tuple(v.shape)) for k, v in state.items()] != [(n, s) for n, s, _ in report.state]:
        raise ValueError("report does not describe this model (state-dict names or shapes "
                         "differ); pass the model returned together with the report")
    entries, payload, offset = [], [], 0
    for name, tensor in state.items():
        entry: dict[str, Any] = {"name": name, "shape": list(tensor.shape),
                                 "dtype": str(tensor.dtype).replace("torch.", "")}
        lr = report.layers.get(name)
        if lr is not None and (lr.bits < _FP32_BITS or lr.nnz < lr.numel):
            meta, blobs = _encode_layer(tensor, lr)
            entry.update(meta)
        else:
            blobs = [tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()]
            entry["storage"] = "raw"
        entry["blobs"] = [len(b) for b in blobs]
        entry["offset"] = offset
        offset += sum(entry["blobs"])
        payload.extend(blobs)
        entries.append(entry)
    header = {"format": "lcc-compressed", "version": _VERSION, "model_name": model_name,
              "model_class": type(model).__name__, "arch_hash": arch_hash(model),
              "method": report.method, "settings": report.settings, "payload_bytes": offset,
              "byteorder": "little", "entries": entries}
    head = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
    body = b"".join([_MAGIC, struct.pack("<HI", _VERSION, len(head)), head, *payload])
    digest = hashlib.sha256(body).digest()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(body)
        f.write(digest)
    return path


#: What to do about a broken artefact: compression writes it again from the trained model.
_ARTEFACT_REMEDY = ("Delete it: rerunning the compression (notebook 05's run, or save_compressed) writes it "
                    "again from the trained model")


def _read_artefact(path: Path) -> tuple[dict[str, Any], memoryview]:
    if not path.is_file():
        raise FileNotFoundError(f"compressed artefact {path} does not exist")
    data = path.read_bytes()
    fixed = len(_MAGIC) + 6
    remedy = _ARTEFACT_REMEDY
    if len(data) < fixed + _CHECKSUM_BYTES or data[:4] != _MAGIC:
        raise broken(path, f"not an lcc compressed artefact (bad magic or too short: {len(data)} bytes)", remedy)
    version, head_len = struct.unpack("<HI", data[4:fixed])
    if version not in (1, _VERSION):
        raise ValueError(f"{path}: artefact format version {version} is not supported "
                         f"(this code reads version {_VERSION})")
    try:
        header = json.loads(zlib.decompress(data[fixed:fixed + head_len]))
    except (zlib.error, ValueError) as exc:
        raise broken(path, "truncated or corrupted artefact (unreadable header)", remedy) from exc
    expected = fixed + head_len + header["payload_bytes"] + _CHECKSUM_BYTES
    if len(data) != expected:
        raise broken(path, f"truncated or corrupted artefact: {len(data)} bytes, header promises {expected}",
                     remedy)
    if hashlib.sha256(data[:-_CHECKSUM_BYTES]).digest() != data[-_CHECKSUM_BYTES:]:
        raise broken(path, "sha256 checksum mismatch, the artefact is corrupted (changed or truncated after "
                           "it was written)", remedy)
    return header, memoryview(data)[fixed + head_len:-_CHECKSUM_BYTES]


def load_compressed(path: str | os.PathLike,
                    model_factory_or_model: nn.Module | Callable[[], nn.Module]) -> nn.Module:
    """Rebuild a model from an artefact written by :func:`save_compressed`.

    Args:
        path: the ``.lcc`` file.
        model_factory_or_model: a model of the same architecture (copied, not modified) or a
            zero-argument function that builds one.

    Returns:
        The model, in eval mode, whose weights equal the simulated compressed model's bit for
        bit (same codes, same fp32 scales, same de-quantization formula).

    """
    path = Path(path)
    if isinstance(model_factory_or_model, nn.Module):
        model = copy.deepcopy(model_factory_or_model)
    elif callable(model_factory_or_model):
        model = model_factory_or_model()
        _check_model(model, "model_factory_or_model()")
    else:
        raise TypeError("model_factory_or_model must be a torch model or a function returning "
                        f"one, got {type(model_factory_or_model).__name__}")
    header, payload = _read_artefact(path)
    if header["arch_hash"] != arch_hash(model):
        mine = {n: s for n, s, _ in _state_entries(model)}
        diff = [e["name"] for e in header["entries"] if tuple(e["shape"]) != mine.get(e["name"])]
        raise ValueError(
            f"{path} was written for another model ({header['model_class']} "
            f"{header['model_name']!r}, arch hash {header['arch_hash']}) than "
            f"{type(model).__name__} (arch hash {arch_hash(model)}); "
            f"first differing tensors: {diff[:3] or 'class or dtypes'}")
    new_state = {}
    for e in header["entries"]:
        start = e["offset"]
        blobs = []
        for n in e["blobs"]:
            blobs.append(bytes(payload[start:start + n]))
            start += n
        shape = tuple(e["shape"])
        if e["storage"] == "raw":
            dt = getattr(torch, e["dtype"])
            buf = bytearray(blobs[0])
            new_state[e["name"]] = (torch.frombuffer(buf, dtype=dt).reshape(shape).clone()
                                    if buf else torch.zeros(shape, dtype=dt))
        else:
            new_state[e["name"]] = _decode_layer(e, blobs, shape)
    model.load_state_dict(new_state, strict=True)
    return model.eval()
