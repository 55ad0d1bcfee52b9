"""Lists a GGUF's tensors as llama.cpp's own Python reader (the `gguf` package) sees them: name -> [ggml type,
sha256 of the tensor's bytes]. Usage: gguf_tensors.py FILE.gguf"""
import hashlib
import json
import sys

from gguf import GGUFReader

reader = GGUFReader(sys.argv[1])
print(json.dumps({
    t.name: [t.tensor_type.name, hashlib.sha256(t.data.tobytes()).hexdigest()] for t in reader.tensors
}))
