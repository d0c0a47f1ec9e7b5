"""`tunesmith eval` of a preference run on a pair file: each prompt is scored against its chosen answer."""

from __future__ import annotations

import random

from gen_fixtures import ANSWER, build_tiny_lm, write_jsonl

import tunesmith


def test_a_preference_run_evaluates_on_pairs_against_the_chosen_answers(tmp_path):
    model = build_tiny_lm(tmp_path / "llama", "llama")
    rng, rows = random.Random(0), []
    for _ in range(40):
        a = rng.choice(list(ANSWER))
        wrong = next(c for c in ANSWER.values() if c != ANSWER[a])
        prompt = [{"role": "user", "content": f"What colour is the {a}?"}]
        rows.append({"messages": prompt, "chosen": f"The {a} is {ANSWER[a]}.", "rejected": f"The {a} is {wrong}."})
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    run = tunesmith.finetune(
        {
            "name": "pref",
            "task": "preference",
            "output_dir": str(tmp_path / "runs"),
            "data": {"path": str(data), "max_length": 64, "group_near_duplicates": False},
            "audit": {"block_on_leakage": False},
            "model": {"name": str(model), "chat_template": "default"},
            "strategy": {"name": "lora", "r": 4, "target_modules": ["q_proj", "v_proj"]},
            "train": {"max_steps": 2, "batch_size": 8, "precision": "fp32", "patience": None},
            "generate": {"samples": 3, "max_new_tokens": 4},
            "tracking": {"backend": "none"},
        }
    )
    out = run.evaluate(str(data), save=False)
    assert out["n"] == 40 and out["loss"] > 0  # the loss on the 40 chosen answers
    assert out["generation"]["n"] == 3
