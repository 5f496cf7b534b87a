#!/usr/bin/env python3
"""Write the small seed inputs of the fuzz targets into fuzz/corpus/ (run from the repo root).

Checkpoint seeds are tiny flows in the snf checkpoint format; their `snf.sha256` is a
placeholder: the checkpoint_loader target re-seals every input (fuzzing::reseal), so the
seeds reach the parser and the layer builders, and the unsealed copy exercises the
checksum rejection.
"""
import gzip, json, os, struct

def safetensors(tensors, meta):
    header, offset, blobs = {}, 0, []
    for name, shape, values in tensors:
        data = b"".join(struct.pack("<f", v) for v in values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    header["__metadata__"] = meta
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)

def checkpoint(dim, layers, tensors):
    cfg = {"format": "snf-checkpoint", "version": 1, "dtype": "f32", "dim": dim, "layers": layers,
           "static_log_det": 0.0, "training": None, "meta": None}
    return safetensors(tensors, {"snf": json.dumps(cfg, separators=(",", ":")), "snf.sha256": "0" * 64})

def eye(n):
    return [1.0 if i == j else 0.0 for i in range(n) for j in range(n)]

def write(target, name, data):
    d = os.path.join("fuzz", "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

conv = {"kind": "snf-conv", "in_channels": 1, "out_channels": 1, "input": [2, 2], "kernel": [1, 1], "stride": [1, 1],
        "padding": [0, 0], "dilation": [1, 1], "groups": 1, "inverse_kernel": [1, 1], "bias": False}
spline = {"kind": "spline", "dim": 4, "bins": 5, "tail_bound": 10.0, "min_width": 1e-3, "min_height": 1e-3, "min_derivative": 1e-3}
write("checkpoint_loader", "fc4", checkpoint(4,
    [{"kind": "snf-linear", "dim": 4, "bias": True}, {"kind": "smooth-leaky-relu", "alpha": 0.3}, {"kind": "exact-linear", "dim": 4, "bias": False}],
    [("layers.000.w", [4, 4], eye(4)), ("layers.000.r", [4, 4], eye(4)), ("layers.000.b", [4, 1], [0.0] * 4), ("layers.002.w", [4, 4], eye(4))]))
write("checkpoint_loader", "conv4", checkpoint(4,
    [{"kind": "preprocess", "alpha": 1e-6}, conv, spline, {"kind": "squeeze", "shape": [1, 2, 2]}, {"kind": "leaky-relu", "slope": 0.1}],
    [("layers.001.w", [1, 1], [1.0]), ("layers.001.r", [1, 1], [1.0]),
     ("layers.002.widths", [5, 4], [0.0] * 20), ("layers.002.heights", [5, 4], [0.0] * 20), ("layers.002.slopes", [4, 4], [0.5413] * 16)]))
write("checkpoint_loader", "empty", b"")

def idx(dtype, dims, payload):
    return bytes([0, 0, dtype, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + payload
write("idx_reader", "images2x3x3", idx(0x08, [2, 3, 3], bytes(range(18))))
write("idx_reader", "labels4", idx(0x08, [4], bytes([1, 2, 3, 9])))
write("idx_reader", "labels4.gz", gzip.compress(idx(0x08, [4], bytes([0, 5, 7, 9])), mtime=0))
write("idx_reader", "short", idx(0x08, [10], bytes(3)))

write("model_config", "conv", bytes([0, 1, 0, 0, 5, 5, 3, 3, 1, 1, 1, 1, 1, 1, 1, 3, 3, 1, 7]))
write("model_config", "spline", bytes([1, 5]) + struct.pack("<d", 10.0) + struct.pack("<d", 1e-3) * 3 + bytes([8]))
write("model_config", "squeeze", bytes([2, 1, 4, 4]))
write("model_config", "linear", bytes([3, 2, 2]) + struct.pack("<d", 1.0) * 8)
spec = json.dumps({"kind": "snf-linear", "dim": 3, "bias": True}).encode()
write("model_config", "json", bytes([4, len(spec)]) + spec + bytes([3, 3, 3, 3, 3, 1]))
