"""Tiny generative models built in code (no downloads): a byte-level BPE tokenizer trained on the toy
task, and random Llama / GPT-2 / T5 models over it. The toy task is learnable in seconds: each
animal has one colour, and the answer names it."""

from __future__ import annotations

import json
import random
from pathlib import Path

ANIMALS = ["cat", "dog", "fox", "owl", "bee", "cow", "elk", "ant"]
COLOURS = ["red", "blue", "green", "black", "white", "pink", "gray", "gold"]
ANSWER = dict(zip(ANIMALS, COLOURS))


def toy_pairs(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a = rng.choice(ANIMALS)
        rows.append({"prompt": f"What colour is the {a}?", "completion": f"The {a} is {ANSWER[a]}."})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build_tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [f"{r['prompt']} {r['completion']}" for r in toy_pairs(200)] + [
        "### System:\n### User:\n### Assistant:\n",
        '{"name": "x"}',
    ]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    return fast


def build_tiny_lm(folder: Path, kind: str = "llama") -> Path:
    import torch
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        T5Config,
        T5ForConditionalGeneration,
    )

    tok = build_tokenizer(folder)
    v, pad, bos, eos = len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id
    torch.manual_seed(0)
    if kind == "llama":
        cfg = LlamaConfig(
            vocab_size=v,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            pad_token_id=pad,
            bos_token_id=bos,
            eos_token_id=eos,
            tie_word_embeddings=True,
        )
        model = LlamaForCausalLM(cfg)
    elif kind == "gpt2":
        cfg = GPT2Config(
            vocab_size=v,
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=256,
            pad_token_id=pad,
            bos_token_id=bos,
            eos_token_id=eos,
        )
        model = GPT2LMHeadModel(cfg)
    else:
        cfg = T5Config(
            vocab_size=v,
            d_model=64,
            d_kv=16,
            d_ff=128,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            pad_token_id=pad,
            eos_token_id=eos,
            decoder_start_token_id=pad,
        )
        model = T5ForConditionalGeneration(cfg)
    model.save_pretrained(folder)
    return folder
