"""Tiny random models and toy tasks for the contract tests, built in code (no downloads).

The shared pieces come from tests/conftest.py and tests/gen_fixtures.py; the variants here take sizes and
initialisation as parameters. Only transformers / tokenizers / pandas are used, never tunesmith internals.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from conftest import NEGATIVE, NEUTRAL, POSITIVE, WORDS, build_tiny_bert, write_csv  # noqa: F401
from gen_fixtures import ANIMALS, ANSWER, COLOURS, toy_pairs, write_jsonl  # noqa: F401

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# ---- classification: the label is given by which sentiment word the text contains


def toy_rows(n: int, seed: int = 0, neutral_words: tuple[int, int] = (3, 12), sentiment_words: int = 5) -> list[dict]:
    """A learnable 3-class task (labels pos / neg / neu, balanced): `neutral_words` filler words per text, plus one of
    the first `sentiment_words` positive or negative words (fewer and shorter: learnable from fewer rows)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = ["pos", "neg", "neu"][i % 3]
        words = rng.choices(NEUTRAL, k=rng.randint(*neutral_words))
        if label != "neu":
            words.insert(
                rng.randrange(len(words) + 1), rng.choice((POSITIVE if label == "pos" else NEGATIVE)[:sentiment_words])
            )
        rows.append({"text": " ".join(words), "label": label})
    return rows


# ---- generation: each animal has one colour, and the answer names it


def toy_chats(n: int, seed: int = 0) -> list[dict]:
    """The same pairs as one-turn chats (`messages`)."""
    return [
        {"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}]}
        for r in toy_pairs(n, seed)
    ]


def build_tokenizer(folder: Path):
    """A byte-level BPE tokenizer (400 tokens) trained on the toy task."""
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


def build_tiny_lm(folder: Path, kind: str = "llama", hidden: int = 32, init: float | None = None) -> Path:
    """A 2-layer random Llama (decoder) or T5 (encoder-decoder) over the toy BPE tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

    tok = build_tokenizer(folder)
    v, pad, bos, eos = len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id
    torch.manual_seed(0)
    if kind == "llama":
        cfg = LlamaConfig(
            vocab_size=v,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            pad_token_id=pad,
            bos_token_id=bos,
            eos_token_id=eos,
            tie_word_embeddings=True,
            **({"initializer_range": init} if init else {}),
        )
        model = LlamaForCausalLM(cfg)
    elif kind == "t5":
        cfg = T5Config(
            vocab_size=v,
            d_model=hidden,
            d_kv=hidden // 4,
            d_ff=2 * hidden,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            pad_token_id=pad,
            eos_token_id=eos,
            decoder_start_token_id=pad,
            **({"initializer_factor": init} if init else {}),
        )
        model = T5ForConditionalGeneration(cfg)
    else:
        raise ValueError(kind)
    model.save_pretrained(folder)
    return folder
