"""Writes tests/fixtures/families/ (run through scripts/make-family-fixtures).

Per family: `<family>.f32.gguf`, a tiny random-weight model (numpy seed per
family, f32 tensors, every metadata key llama.cpp's loader reads for the
architecture, a 300-token GPT-2 byte-level BPE vocabulary), its
`<family>.q8_0.gguf` copy made by llama.cpp's `llama_model_quantize`, and
per file `<file>.logits.npy` (float32 [prompt + 8, vocab]: the prompt's
positions from one batch, then each greedy decode step) and
`<file>.json` (token ids, greedy tokens, llama.cpp version, settings).
"""

import json
import pathlib
import sys

import numpy as np
import gguf
import llama_cpp

VOCAB = 300
HIDDEN, HEADS, KV_HEADS, FFN, LAYERS, CONTEXT = 64, 4, 2, 128, 2, 256
PROMPT = [17, 254, 3, 88, 141, 200, 9, 63, 271, 120, 44, 5, 190, 233, 77, 260]
GREEDY = 8
EPS = 1e-6


def byte_tokens():
    """GPT-2's printable stand-ins for the 256 bytes (bytes_to_unicode)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def vocabulary():
    tokens = byte_tokens()
    pairs = [
        ("Ġ", "t"), ("h", "e"), ("i", "n"), ("Ġt", "he"), ("a", "n"), ("e", "r"), ("o", "n"),
        ("Ġ", "a"), ("r", "e"), ("a", "t"), ("e", "n"), ("o", "r"), ("Ġ", "s"), ("e", "s"),
        ("i", "s"), ("Ġ", "w"), ("i", "t"), ("Ġ", "o"), ("a", "l"), ("Ġ", "c"), ("Ġ", "b"),
        ("Ġ", "f"), ("o", "u"), ("e", "d"), ("i", "ng"), ("n", "g"), ("Ġ", "p"), ("a", "r"),
        ("l", "e"), ("Ġ", "m"), ("Ġa", "n"), ("Ġ", "d"), ("Ġo", "f"), ("i", "c"), ("r", "o"),
        ("Ġ", "h"), ("Ġ", "in"), ("l", "l"), ("Ġt", "o"), ("a", "s"), ("Ġ", "th"), ("t", "h"),
        ("Ġs", "t"),
    ]
    merges = []
    for a, b in pairs:
        if a + b not in tokens:
            tokens.append(a + b)
        merges.append(f"{a} {b}")
    tokens.append("<|endoftext|>")
    assert len(tokens) == VOCAB, len(tokens)
    types = [1] * (VOCAB - 1) + [3]
    return tokens, types, merges


LFM2_CONV_LAYERS = (0, 2)


def layers(family):
    # LFM2: convolution, attention, convolution.
    return 3 if family == "lfm2" else LAYERS


def ffn(p, family, lin, norm):
    t = {p + "ffn_norm.weight": norm(HIDDEN)}
    gate, up = lin(FFN, HIDDEN, 2.0), lin(FFN, HIDDEN)
    if family == "phi3":
        t[p + "ffn_up.weight"] = np.concatenate([gate, up])
    else:
        t[p + "ffn_gate.weight"], t[p + "ffn_up.weight"] = gate, up
    t[p + "ffn_down.weight"] = lin(HIDDEN, FFN)
    return t


def attention(p, family, head_dim, lin, norm, vec):
    q_w, kv_w = HEADS * head_dim, KV_HEADS * head_dim
    t = {}
    q, k, v = lin(q_w, HIDDEN, 2.0), lin(kv_w, HIDDEN, 2.0), lin(kv_w, HIDDEN)
    if family == "phi3":
        t[p + "attn_qkv.weight"] = np.concatenate([q, k, v])
    else:
        t[p + "attn_q.weight"], t[p + "attn_k.weight"], t[p + "attn_v.weight"] = q, k, v
    if family == "qwen2":
        t[p + "attn_q.bias"] = vec(q_w, 0.5)
        t[p + "attn_k.bias"] = vec(kv_w, 0.5)
        t[p + "attn_v.bias"] = vec(kv_w, 0.2)
    if family in ("qwen3", "lfm2"):
        t[p + "attn_q_norm.weight"] = norm(head_dim)
        t[p + "attn_k_norm.weight"] = norm(head_dim)
    t[p + "attn_output.weight"] = lin(HIDDEN, q_w)
    return t


def family_tensors(family, rng):
    """Tensors by llama.cpp name, row-major [out, in], and the head width."""
    head_dim = 32 if family == "qwen3" else HIDDEN // HEADS

    def lin(rows, cols, gain=1.0):
        return (rng.standard_normal((rows, cols)) * gain / np.sqrt(cols)).astype(np.float32)

    def norm(n):
        return (1.0 + 0.2 * rng.standard_normal(n)).astype(np.float32)

    def vec(n, scale):
        return (scale * rng.standard_normal(n)).astype(np.float32)

    # A tied head reads the embedding back: keep it small beside the blocks'
    # output so the continuation is not just the input token; Granite
    # multiplies it by embedding_scale first.
    embed_std = {"qwen2": 0.25, "granite": 0.1}.get(family, 1.0)
    t = {"token_embd.weight": (embed_std * rng.standard_normal((VOCAB, HIDDEN))).astype(np.float32)}
    for i in range(layers(family)):
        p = f"blk.{i}."
        t[p + "attn_norm.weight"] = norm(HIDDEN)
        if family == "lfm2" and i in LFM2_CONV_LAYERS:
            # Gated short convolution: B, C, x rows, then 3 taps per channel.
            t[p + "shortconv.in_proj.weight"] = lin(3 * HIDDEN, HIDDEN, 2.0)
            t[p + "shortconv.conv.weight"] = vec(HIDDEN * 3, 0.7).reshape(HIDDEN, 3)
            t[p + "shortconv.out_proj.weight"] = lin(HIDDEN, HIDDEN)
        else:
            t.update(attention(p, family, head_dim, lin, norm, vec))
        t.update(ffn(p, family, lin, norm))
    # LFM2's converter names the final norm token_embd_norm.
    t["token_embd_norm.weight" if family == "lfm2" else "output_norm.weight"] = norm(HIDDEN)
    if family == "granite":
        # Per-pair RoPE frequency divisors (as LLaMA 3's rope_freqs), which
        # llama.cpp's Granite graph applies too.
        t["rope_freqs.weight"] = np.linspace(1.0, 8.0, head_dim // 2).astype(np.float32)
    # Qwen2 ties the head to the embedding (as Qwen2.5-0.5B does).
    if family != "qwen2":
        t["output.weight"] = lin(VOCAB, HIDDEN, 4.0)
    return t, head_dim


def write_gguf(path, family, seed):
    rng = np.random.default_rng(seed)
    tensors, head_dim = family_tensors(family, rng)
    w = gguf.GGUFWriter(str(path), family)
    # Not the family name: llama.cpp special-cases vocabularies of models named "phi3".
    w.add_name("edgeforge test fixture")
    a = family
    w.add_uint32(f"{a}.context_length", CONTEXT)
    w.add_uint32(f"{a}.embedding_length", HIDDEN)
    w.add_uint32(f"{a}.block_count", layers(family))
    w.add_uint32(f"{a}.feed_forward_length", FFN)
    w.add_uint32(f"{a}.attention.head_count", HEADS)
    if family == "lfm2":
        # Per layer; 0 marks a convolution layer.
        kv = [0 if i in LFM2_CONV_LAYERS else KV_HEADS for i in range(layers(family))]
        w.add_array(f"{a}.attention.head_count_kv", kv)
        w.add_uint32(f"{a}.shortconv.l_cache", 3)
    else:
        w.add_uint32(f"{a}.attention.head_count_kv", KV_HEADS)
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", EPS)
    w.add_float32(f"{a}.rope.freq_base", 10000.0 if family == "granite" else 1000000.0)
    w.add_uint32(f"{a}.attention.key_length", head_dim)
    w.add_uint32(f"{a}.attention.value_length", head_dim)
    # Phi-3 rotates 3/4 of each head here (as Phi-4-mini does), to cover partial rotary.
    w.add_uint32(f"{a}.rope.dimension_count", 12 if family == "phi3" else head_dim)
    if family == "granite":
        w.add_float32(f"{a}.embedding_scale", 12.0)
        w.add_float32(f"{a}.residual_scale", 0.22)
        w.add_float32(f"{a}.attention.scale", 0.125)
        w.add_float32(f"{a}.logit_scale", 2.0)
    w.add_uint32("general.file_type", 0)
    tokens, types, merges = vocabulary()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2" if family.startswith("qwen") else "default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(VOCAB - 1)
    w.add_eos_token_id(VOCAB - 1)
    w.add_add_bos_token(False)
    for name, value in tensors.items():
        w.add_tensor(name, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def quantize(src, dst):
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    assert rc == 0, f"llama_model_quantize failed: {rc}"


def record(path):
    """llama.cpp's logits for the prompt (one batch) and 8 greedy steps."""
    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=64,
        n_batch=64,
        n_threads=2,
        n_threads_batch=2,
        logits_all=True,
        flash_attn=False,
        seed=0,
        verbose=False,
    )
    nv = llm.n_vocab()
    assert nv == VOCAB, nv
    llm.reset()
    llm.eval(PROMPT)
    greedy = []
    for _ in range(GREEDY):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        greedy.append(tok)
        llm.eval([tok])
    rows = llm.scores[: llm.n_tokens]
    logits = np.stack(rows).astype(np.float32)
    np.save(f"{path}.logits.npy", logits)
    meta = {
        "file": path.name,
        "prompt": PROMPT,
        "greedy": greedy,
        "logits": f"{path.name}.logits.npy",
        "logits_rows": "prompt positions (one batch), then the logits after feeding each greedy token",
        "llama_cpp_python": llama_cpp.__version__,
        "settings": {"n_ctx": 64, "n_batch": 64, "n_threads": 2, "flash_attn": False, "kv_cache": "f16 (default)"},
    }
    pathlib.Path(f"{path}.json").write_text(json.dumps(meta, indent=1) + "\n")
    del llm
    top2 = np.sort(logits, axis=1)[:, -2:]
    return greedy, float((top2[:, 1] - top2[:, 0]).min())


def main():
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for seed, family in enumerate(["qwen2", "qwen3", "phi3", "granite", "lfm2"]):
        f32 = out / f"{family}.f32.gguf"
        write_gguf(f32, family, 1000 + seed)
        q8 = out / f"{family}.q8_0.gguf"
        quantize(f32, q8)
        for p in (f32, q8):
            greedy, gap = record(p)
            print(f"{p.name}: {p.stat().st_size} bytes, greedy {greedy}, smallest top-2 gap {gap:.4f}")


if __name__ == "__main__":
    main()
