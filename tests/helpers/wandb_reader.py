"""Read metrics back from an offline W&B run file (wandb >= 0.31 ships no Python reader).

The ``run-*.wandb`` file is a LevelDB-style log: a 7-byte header (``:W&B``, version), then 32 KiB blocks of records,
each with a 7-byte header (crc32 uint32, length uint16, type uint8: FULL=1, FIRST=2, MIDDLE=3, LAST=4). Concatenated
payloads are ``wandb.proto.wandb_internal_pb2.Record`` messages; ``history`` records hold the logged metrics.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
HEADER = 7


def read_records(path: str | Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    pos, records, pending = HEADER, [], b""
    while pos + HEADER <= len(data):
        block_left = BLOCK - (pos % BLOCK)
        if block_left < HEADER:  # trailer padding of the block
            pos += block_left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and length == 0:  # zero padding
            pos += block_left
            continue
        payload = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 1:
            pending = payload
        elif kind == 2:
            pending = payload
            continue
        elif kind == 3:
            pending += payload
            continue
        elif kind == 4:
            pending += payload
        else:
            raise ValueError(f"unknown record type {kind} at byte {pos}")
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        records.append(record)
        pending = b""
    return records


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """Return one dict per ``history`` record, keys joined with ``/`` as logged."""
    rows = []
    for record in read_records(path):
        if record.WhichOneof("record_type") != "history":
            continue
        row = {}
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            row[key] = json.loads(item.value_json)
        rows.append(row)
    return rows


def finished_run_files(root: str | Path, *, timeout: float = 60.0) -> list[Path]:
    """The ``run-*.wandb`` files under ``root`` once each holds its ``exit`` record.

    ``wandb.finish()`` can return before W&B's service process has written the last records of an offline run (seen
    on a loaded machine: the file missing, or two history rows short), so poll until every run file is complete.
    """
    import time

    deadline = time.monotonic() + timeout
    while True:
        files = sorted(Path(root).rglob("run-*.wandb"))
        done = []
        for path in files:
            try:
                if any(r.WhichOneof("record_type") == "exit" for r in read_records(path)):
                    done.append(path)
            except Exception:  # noqa: BLE001 - a file being written may end in a partial record
                pass
        if files and len(done) == len(files):
            return files
        if time.monotonic() > deadline:
            return files
        time.sleep(0.2)
