"""Reads a GGUF written by edgeforge with llama.cpp's own Python reader (the
`gguf` package) and checks every metadata value and tensor against an
expectation JSON. Usage: gguf_check.py FILE.gguf EXPECT.json"""
import hashlib
import json
import sys

import numpy as np
from gguf import GGUFReader, GGUFValueType

path, expect_path = sys.argv[1], sys.argv[2]
expect = json.load(open(expect_path))
reader = GGUFReader(path)
errors = []

fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
if list(fields) != [kv["key"] for kv in expect["metadata"]]:
    errors.append(f"keys differ: {list(fields)} vs {[kv['key'] for kv in expect['metadata']]}")


def close(a, b):
    if isinstance(a, float) or isinstance(b, float):
        return np.float32(a) == np.float32(b) or (a != a and b != b)
    return a == b


for kv in expect["metadata"]:
    field = fields.get(kv["key"])
    if field is None:
        continue
    got_type = field.types[0].name.lower()
    if got_type != kv["type"]:
        errors.append(f"{kv['key']}: type {got_type}, expected {kv['type']}")
        continue
    got = field.contents()
    want = kv["value"]
    if kv["type"] == "array":
        if len(got) != len(want) or not all(close(a, b) for a, b in zip(got, want)):
            errors.append(f"{kv['key']}: {got!r} != {want!r}")
        sub = field.types[1].name.lower() if len(field.types) > 1 else None
        if want and sub != kv["elem_type"]:
            errors.append(f"{kv['key']}: element type {sub}, expected {kv['elem_type']}")
    elif not close(got, want):
        errors.append(f"{kv['key']}: {got!r} != {want!r}")

tensors = {t.name: t for t in reader.tensors}
if [t.name for t in reader.tensors] != [t["name"] for t in expect["tensors"]]:
    errors.append("tensor order differs")
for t in expect["tensors"]:
    got = tensors.get(t["name"])
    if got is None:
        errors.append(f"tensor {t['name']} missing")
        continue
    if got.tensor_type.name != t["type"]:
        errors.append(f"{t['name']}: type {got.tensor_type.name} != {t['type']}")
    if [int(d) for d in got.shape] != t["dims"]:
        errors.append(f"{t['name']}: dims {list(got.shape)} != {t['dims']}")
    digest = hashlib.sha256(np.ascontiguousarray(got.data).tobytes()).hexdigest()
    if digest != t["sha256"]:
        errors.append(f"{t['name']}: bytes differ")

if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
print(f"ok: {len(expect['metadata'])} keys, {len(expect['tensors'])} tensors")
