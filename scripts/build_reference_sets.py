#!/usr/bin/env python3
"""Build the reference sets that stand for "what a pretrained model knew", to measure catastrophic forgetting.

Three files, from the English YAML files of the PyPI package `chatterbot-corpus` (read directly, never
imported; it is not a tunesmith dependency) and from SmolLM2-135M-Instruct itself:

  data/reference-text.csv   column `text`: ~600 general English sentences (questions and answers of the
                            corpus conversations, deduplicated, 20-300 characters, no URLs, no code),
                            to measure an encoder's representation drift (all-MiniLM-L6-v2).
  data/general-chat.jsonl   ~240 chat samples {"messages": [user Q, assistant A]}: Q a general prompt from
                            the corpus (many categories), A the answer of SmolLM2-135M-Instruct itself
                            (its chat template, greedy, <= 64 new tokens): perplexity on it is low before
                            fine-tuning and rises as the model forgets its own chat style (answers under
                            3 words or degenerate, e.g. "0.0000000000...", are dropped).
  data/general-qa.jsonl     ~60 chat samples of questions with short known answers (a fixed list of simple
                            facts, then short factual corpus trivia), plus `base_answer` (SmolLM2's greedy
                            answer, <= 48 new tokens) and `base_correct` (the normalised known answer appears
                            in the normalised generation); the questions the base model gets right come first.

    .venv/bin/python -m pip install --no-deps --target /tmp/cbc chatterbot-corpus==1.3.3   # not a dependency
    .venv/bin/python scripts/build_reference_sets.py --corpus /tmp/cbc/chatterbot_corpus/data/english --out data
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import random
import re
import sys
import time

import yaml
from tqdm import tqdm

MODEL = "smollm2-135m-instruct"
URL = re.compile(r"https?://|www\.|\.com\b|\.org\b", re.I)
REPEAT = re.compile(r"(.)\1{9,}")  # degenerate generations ("0.000000000...")
CODE = re.compile(r"```|\bdef |\bimport |[{}<>;=\\]|\(\)")
# Categories whose first utterances make general chat prompts (coding: the answers would be truncated code).
CHAT_SKIP = {"coding.yml"}
QA_FILES = ("trivia.yml", "science.yml", "history.yml")
NUMBERS = {
    w: str(i)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty".split()
    )
}
NUMBERS.update({"thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "hundred": "100"})

# Simple, unambiguous facts: (question, known answer, other accepted spellings).
FACTS = [
    ("What is the capital of France?", "Paris", ()),
    ("What is the capital of Japan?", "Tokyo", ()),
    ("What is the capital of Italy?", "Rome", ()),
    ("What is the capital of Germany?", "Berlin", ()),
    ("What is the capital of Spain?", "Madrid", ()),
    ("What is the capital of the United Kingdom?", "London", ()),
    ("What is the capital of Russia?", "Moscow", ()),
    ("What is the capital of Egypt?", "Cairo", ()),
    ("What is the capital of Canada?", "Ottawa", ()),
    ("What is the capital of Australia?", "Canberra", ()),
    ("What is the capital of China?", "Beijing", ()),
    ("What is the capital of Greece?", "Athens", ()),
    ("What is the capital of Portugal?", "Lisbon", ()),
    ("What is the capital of Ireland?", "Dublin", ()),
    ("What is the capital of Norway?", "Oslo", ()),
    ("What is the capital of Sweden?", "Stockholm", ()),
    ("What is the capital of Austria?", "Vienna", ()),
    ("What is the capital of Poland?", "Warsaw", ()),
    ("What is the capital of India?", "New Delhi", ()),
    ("What is the capital of Kenya?", "Nairobi", ()),
    ("What is the capital of Argentina?", "Buenos Aires", ()),
    ("What is the capital of Thailand?", "Bangkok", ()),
    ("What is the capital of South Korea?", "Seoul", ()),
    ("What is the capital of Mexico?", "Mexico City", ()),
    ("How many days are there in a week?", "Seven", ()),
    ("How many legs does a spider have?", "Eight", ()),
    ("How many continents are there on Earth?", "Seven", ()),
    ("How many sides does a triangle have?", "Three", ()),
    ("How many hours are there in a day?", "24", ()),
    ("How many minutes are there in an hour?", "60", ()),
    ("How many months are there in a year?", "Twelve", ()),
    ("How many planets are there in our solar system?", "Eight", ()),
    ("How many players does a soccer team have on the field?", "Eleven", ()),
    ("How many strings does a standard guitar have?", "Six", ()),
    ("What is the largest planet in our solar system?", "Jupiter", ()),
    ("Which planet is known as the Red Planet?", "Mars", ()),
    ("Which planet is closest to the Sun?", "Mercury", ()),
    ("Which planet is famous for its prominent rings?", "Saturn", ()),
    ("What is the chemical symbol for gold?", "Au", ()),
    ("What is the chemical symbol for iron?", "Fe", ()),
    ("What is the chemical formula for water?", "H2O", ()),
    ("What gas do plants absorb from the air for photosynthesis?", "Carbon dioxide", ("CO2",)),
    ("What gas do humans need to breathe to stay alive?", "Oxygen", ()),
    ("At what temperature in degrees Celsius does water boil at sea level?", "100 degrees Celsius", ("100",)),
    ("What is the largest ocean on Earth?", "The Pacific Ocean", ("Pacific",)),
    ("What is the tallest mountain in the world?", "Mount Everest", ("Everest",)),
    ("What is the largest continent?", "Asia", ()),
    ("What is the largest country in the world by area?", "Russia", ()),
    ("Which ocean lies between Europe and North America?", "The Atlantic Ocean", ("Atlantic",)),
    ("In which country are the pyramids of Giza?", "Egypt", ()),
    ("In which city is the Eiffel Tower?", "Paris", ()),
    ("In which country is the Great Wall?", "China", ()),
    ("Who wrote Romeo and Juliet?", "William Shakespeare", ("Shakespeare",)),
    ("Who wrote Hamlet?", "William Shakespeare", ("Shakespeare",)),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci", ("da Vinci",)),
    ("Who wrote Pride and Prejudice?", "Jane Austen", ("Austen",)),
    ("Who developed the theory of relativity?", "Albert Einstein", ("Einstein",)),
    ("Who was the first president of the United States?", "George Washington", ()),
    ("Who discovered penicillin?", "Alexander Fleming", ("Fleming",)),
    ("Who invented the telephone?", "Alexander Graham Bell", ("Graham Bell",)),
    ("Who was the first person to walk on the Moon?", "Neil Armstrong", ("Armstrong",)),
    ("In what year did World War II end?", "1945", ()),
    ("In what year did the Titanic sink?", "1912", ()),
    ("In what year did humans first land on the Moon?", "1969", ()),
    ("What is the largest mammal?", "The blue whale", ()),
    ("What is the fastest land animal?", "The cheetah", ()),
    ("Which animal is known as the king of the jungle?", "The lion", ()),
    ("What do bees make?", "Honey", ()),
    ("What is the opposite of hot?", "Cold", ()),
    ("What color is the sky on a clear day?", "Blue", ()),
    ("What color do you get when you mix blue and yellow?", "Green", ()),
    ("What language is mainly spoken in Brazil?", "Portuguese", ()),
    ("What language is spoken in France?", "French", ()),
    ("What is the currency of Japan?", "The yen", ()),
    ("What is the currency of the United States?", "The dollar", ()),
    ("What is the hardest natural substance?", "Diamond", ()),
    ("Which organ pumps blood through the human body?", "The heart", ()),
    ("What is the largest organ of the human body?", "The skin", ()),
    ("How many bones are there in the adult human body?", "206", ()),
    ("What is the square root of 81?", "Nine", ()),
    ("What is 2 plus 2?", "Four", ()),
    ("What is 10 times 10?", "100", ()),
    ("What is the smallest prime number?", "Two", ()),
    ("What star is at the center of our solar system?", "The Sun", ()),
    ("What is frozen water called?", "Ice", ()),
    ("Which metal is liquid at room temperature?", "Mercury", ()),
    ("What process do plants use to make food from sunlight?", "Photosynthesis", ()),
    ("What force pulls objects towards the Earth?", "Gravity", ()),
    ("What is the name of our galaxy?", "The Milky Way", ()),
    ("What is the center of an atom called?", "The nucleus", ()),
    ("What sport is played at Wimbledon?", "Tennis", ()),
]


def key(text: str) -> str:
    """Deduplication key: case- and whitespace-insensitive."""
    return " ".join(text.lower().split())


def normalise(text: str) -> str:
    """Lowercase, punctuation stripped, articles dropped, number words as digits: for answer matching."""
    words = re.sub(r"[^\w\s]", " ", text.lower()).split()
    return " ".join(NUMBERS.get(w, w) for w in words if w not in ("a", "an", "the"))


def contains(generation: str, answers) -> bool:
    gen = f" {normalise(generation)} "
    return any(f" {normalise(a)} " in gen for a in answers if normalise(a))


def conversations(corpus: str):
    """(file name, [utterances]) for each well-formed conversation of the English corpus files."""
    files = sorted(glob.glob(os.path.join(corpus, "*.yml")))
    if not files:
        sys.exit(f"no *.yml files under {corpus}; install chatterbot-corpus (see this script's docstring)")
    for path in files:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        for conv in data.get("conversations") or []:
            if isinstance(conv, list) and all(isinstance(u, str) for u in conv):  # a few entries are malformed
                yield os.path.basename(path), [" ".join(u.split()) for u in conv]


def build_text(convs, n: int, rng: random.Random) -> list[str]:
    seen, out = set(), []
    for _, conv in convs:
        for u in conv:
            k = key(u)
            if k in seen or not 20 <= len(u) <= 300 or URL.search(u) or CODE.search(u):
                continue
            seen.add(k)
            out.append(u)
    rng.shuffle(out)
    print(f"reference-text: {len(out)} usable lines, keeping {min(n, len(out))}")
    return out[:n]


def qa_candidates(convs, rng: random.Random) -> list[tuple[str, str, tuple]]:
    """The fixed facts, then corpus trivia/science/history whose answer is 1-4 words and not in the question."""
    out, seen = list(FACTS), {key(q) for q, _, _ in FACTS}
    corpus = []
    for name, conv in convs:
        if name not in QA_FILES or len(conv) != 2:
            continue
        q, a = conv[0], conv[1].strip().rstrip(".!")
        if not q.endswith("?") or not 1 <= len(a.split()) <= 4 or key(q) in seen or not normalise(a):
            continue
        if contains(q, [a]) or a.endswith("?") or re.search(r"\b(i|you|my|your|me)\b", a, re.I):
            continue
        seen.add(key(q))
        corpus.append((q, a[:1].upper() + a[1:], ()))
    rng.shuffle(corpus)
    print(f"general-qa: {len(FACTS)} fixed facts + {len(corpus)} short factual corpus questions as candidates")
    return out + corpus


def chat_prompts(convs, exclude: set[str], n: int, rng: random.Random) -> list[str]:
    """First utterances, deduplicated, drawn round-robin over the categories so that no one category dominates."""
    by_cat: dict[str, list[str]] = {}
    seen = set(exclude)
    for name, conv in convs:
        q = conv[0] if conv else ""
        k = normalise(q)
        if name in CHAT_SKIP or not k or k in seen or len(q) > 300 or URL.search(q) or CODE.search(q):
            continue
        seen.add(k)
        by_cat.setdefault(name, []).append(q)
    for qs in by_cat.values():
        rng.shuffle(qs)
    out, i = [], 0
    while len(out) < n and any(i < len(qs) for qs in by_cat.values()):
        out += [qs[i] for qs in by_cat.values() if i < len(qs)]
        i += 1
    print("general-chat: prompts per category: " + ", ".join(f"{c[:-4]} {len(v)}" for c, v in sorted(by_cat.items())))
    return out[:n]


class Generator:
    def __init__(self, batch_size: int):
        import torch
        from transformers import AutoModelForCausalLM

        from tunesmith.models.loading import load_tokenizer, resolve_model

        src = resolve_model(MODEL)
        print(f"model: {MODEL} -> {src.location}")
        self.torch, self.batch_size = torch, batch_size
        self.tok = load_tokenizer(src)
        self.tok.padding_side = "left"
        self.model = AutoModelForCausalLM.from_pretrained(src.location).eval()

    def batch(self, prompts: list[str], max_new_tokens: int) -> list[tuple[str, bool]]:
        """(stripped answer, whether it stopped at EOS) per prompt, greedy, with the model's own chat template."""
        torch, tok, out = self.torch, self.tok, []
        texts = [
            tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts
        ]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            gen = self.model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
        for row in gen[:, enc["input_ids"].shape[1] :]:
            ids = row.tolist()
            stopped = tok.eos_token_id in ids
            if stopped:
                ids = ids[: ids.index(tok.eos_token_id)]
            out.append((tok.decode(ids, skip_special_tokens=True).strip(), stopped))
        return out

    def __call__(self, prompts: list[str], max_new_tokens: int, desc: str) -> list[tuple[str, bool]]:
        out = []
        for i in tqdm(range(0, len(prompts), self.batch_size), desc=desc, unit="batch"):
            out += self.batch(prompts[i : i + self.batch_size], max_new_tokens)
        return out


def write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {path}: {len(rows)} rows")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="/tmp/cbc/chatterbot_corpus/data/english", help="chatterbot-corpus English")
    ap.add_argument("--out", default="data", help="output folder")
    ap.add_argument("--n-text", type=int, default=600)
    ap.add_argument("--n-chat", type=int, default=240)
    ap.add_argument("--n-qa", type=int, default=60)
    ap.add_argument("--min-correct", type=int, default=40, help="generate QA candidates until this many are right")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.time()
    os.makedirs(args.out, exist_ok=True)
    convs = list(conversations(args.corpus))
    print(f"corpus: {len(convs)} conversations from {args.corpus}")

    text = build_text(convs, args.n_text, random.Random(args.seed))
    path = os.path.join(args.out, "reference-text.csv")
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text"])
        w.writerows([t] for t in text)
    print(f"wrote {path}: {len(text)} rows")

    gen = Generator(args.batch_size)

    # general-qa first: its questions are kept out of the chat prompts.
    cands = qa_candidates(convs, random.Random(args.seed))
    rows, n_right = [], 0
    bar = tqdm(total=len(cands), desc="general-qa", unit="question")
    for i in range(0, len(cands), args.batch_size):
        if n_right >= args.min_correct and len(rows) >= args.n_qa:
            break  # enough known questions: no need to try the rest
        part = cands[i : i + args.batch_size]
        answers = gen.batch([q for q, _, _ in part], 48)
        for (q, a, alias), (base, _) in zip(part, answers):
            ok = contains(base, (a, *alias))
            n_right += ok
            rows.append(
                {
                    "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                    "base_answer": base,
                    "base_correct": ok,
                }
            )
        bar.update(len(part))
        bar.set_postfix(right=n_right)
    bar.close()
    print(f"general-qa: base model right on {n_right} of {len(rows)} candidates tried ({len(cands)} available)")
    rows.sort(key=lambda r: not r["base_correct"])  # stable: right ones first, each group in candidate order
    rows = rows[: args.n_qa]
    print(f"general-qa: keeping {len(rows)} rows, {sum(r['base_correct'] for r in rows)} answered right by the base")
    write_jsonl(os.path.join(args.out, "general-qa.jsonl"), rows)

    exclude = {normalise(q) for q, _, _ in cands}
    prompts = chat_prompts(convs, exclude, int(args.n_chat * 1.2) + 16, random.Random(args.seed))
    answers = gen(prompts, 64, "general-chat")
    chat, dropped = [], 0
    for q, (a, _) in zip(prompts, answers):
        if len(a.split()) < 3 or REPEAT.search(a):
            dropped += 1
            continue
        chat.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    stopped = sum(s for _, s in answers)
    print(
        f"general-chat: {len(prompts)} prompts, {stopped} answers ended at EOS, {dropped} dropped (< 3 words or degenerate)"
    )
    chat = chat[: args.n_chat]
    random.Random(args.seed).shuffle(chat)  # the prompts came round-robin by category
    write_jsonl(os.path.join(args.out, "general-chat.jsonl"), chat)
    print(f"done in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
