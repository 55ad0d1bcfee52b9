#!/usr/bin/env python3
"""Runs a folder edgeforge exported for onnxruntime-genai: loads it with onnxruntime_genai (its own
genai_config.json and tokenizer files), greedy-generates new tokens for a prompt, and prints JSON with the
prompt's token ids, the new token ids and their text, and what the graph is made of (ops by domain, opsets,
metadata_props, input types) as onnx reads it.

Usage: genai_check.py FOLDER PROMPT MAX_NEW_TOKENS
"""
import json
import sys

import onnx
import onnxruntime_genai as og


def graph_facts(path):
    model = onnx.load(path)
    return {
        "ops": sorted({f"{n.domain or 'ai.onnx'}:{n.op_type}" for n in model.graph.node}),
        "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "metadata": {p.key: p.value for p in model.metadata_props},
        "inputs": {i.name: onnx.TensorProto.DataType.Name(i.type.tensor_type.elem_type) for i in model.graph.input},
    }


def main():
    folder, prompt, new_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
    config = json.load(open(f"{folder}/genai_config.json"))
    graph = graph_facts(f"{folder}/{config['model']['decoder']['filename']}")
    model = og.Model(folder)
    tokenizer = og.Tokenizer(model)
    prompt_ids = [int(t) for t in tokenizer.encode(prompt)]
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(prompt_ids) + new_tokens)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt_ids)
    tokens = []
    while not generator.is_done() and len(tokens) < new_tokens:
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    print(json.dumps({
        "genai": og.__version__,
        "prompt_tokens": prompt_ids,
        "tokens": tokens,
        "text": tokenizer.decode(tokens),
        "graph": graph,
    }))


if __name__ == "__main__":
    main()
