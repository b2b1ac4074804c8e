"""Read metrics back from an offline W&B run file (wandb >= 0.31 ships no Python reader).

The ``run-*.wandb`` file is a LevelDB-style log: a 7-byte header (``:W&B``, version), then 32 KiB blocks of records,
each with a 7-byte header (crc32 uint32, length uint16, type uint8: FULL=1, FIRST=2, MIDDLE=3, LAST=4). Concatenated
payloads are ``wandb.proto.wandb_internal_pb2.Record`` messages; ``history`` records hold the logged metrics.
"""

from __future__ import annotations

import json
import struct
import time
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


def wait_for_exit(path: str | Path, timeout: float = 60.0) -> list[Any]:
    """Return the run's records once its ``exit`` record is on disk.

    ``wandb.finish()`` can return before the background service has flushed the whole run file (seen on a loaded
    machine: some or all ``history`` records missing); the ``exit`` record is written last. Raises ``TimeoutError``
    if it does not appear within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        records = read_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} holds no `exit` record after {timeout} s ({len(records)} records)")
        time.sleep(0.2)
