"""Round stages (tango_steps.round) and metrics (tango_steps.method.metrics) without Metaflow: rewards,
plans, metrics."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from tango_steps.config import TangoConfig
from tango_steps.faults import maybe_fail
from tango_steps.method.advantages import VerifierReweighter
from tango_steps.method.formats import format_solution, format_verification, parse_solution
from tango_steps.method.metrics import binary_metrics, process_f1
from tango_steps.method.rewards import sampled_step_end_tokens, verifier_reward
from tango_steps.method.schedule import alpha_schedule
from tango_steps.round.plan import heldout_problems, plan_dict, round_plan, round_problems
from tango_steps.round.reward import reward


def test_sampled_step_end_tokens_on_non_canonical_ids(tiny_tokenizer):
    """Sampled ids need not be the tokenizer's own split: one token per character here."""
    text = format_solution(["1 + 2 = 3", "3 + 4 = 7"], "7")
    ids = [tiny_tokenizer.convert_tokens_to_ids(tiny_tokenizer.tokenize(ch))[0] for ch in text]
    assert tiny_tokenizer.decode(ids) == text
    spans = parse_solution(text).step_spans
    assert sampled_step_end_tokens(tiny_tokenizer, ids, spans) == [end - 1 for _, end in spans]
    # a step ending beyond the decoded text (truncated) maps to the last token
    assert sampled_step_end_tokens(tiny_tokenizer, ids[:10], spans[:1]) == [9]
    assert sampled_step_end_tokens(tiny_tokenizer, [], spans[:1]) == [-1]


def _cfg(**kw) -> TangoConfig:
    base = {"schedule": {"verifier_warmup_rounds": 1, "generator_per_verifier": 3}, "rounds": 5}
    base.update(kw)
    return TangoConfig.model_validate(base)


def _rollouts(tok, texts_by_prompt, golds, problems=None, task=None):
    """Rollout rows as ``rollout`` makes them; ``label_correct`` from ``task.check`` when given, else exact match."""
    rows = []
    for i, (texts, gold) in enumerate(zip(texts_by_prompt, golds, strict=True)):
        for j, t in enumerate(texts):
            parsed = parse_solution(t)
            correct = task.check(problems[i], t).correct if task is not None else parsed.answer == gold
            ids = tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            rows.append(
                {
                    "prompt_index": i, "sample": j, "gold": gold, "question": f"q{i}", "text": t,
                    "truncated": False, "prompt_ids": [1, 2, 3], "answer": parsed.answer, "label_correct": correct,
                    "response_ids": ids, "step_end_tokens": sampled_step_end_tokens(tok, ids, parsed.step_spans),
                }
            )  # fmt: skip
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    ("task_name", "params", "wrong_answers"),
    [
        # math-verify reads letters as a product of symbols: yae == eay, cab == abc, ba == ab
        ("last_letters", ["apple", "banana", "cherry"], ["yae", "aey", "eya", "ea", "eayy", "eax", "EAY"]),
        ("arithmetic", (12, [("+", 7), ("*", 3), ("-", 5)]), ["25", "53", "51", "5 2", "52 + 0", "x"]),
    ],
)
def test_outcome_reward_is_the_tasks_own_checker(tiny_model_dir, tiny_tokenizer, task_name, params, wrong_answers):
    """Permuted and near-miss answers get reward 0 and count as wrong for the verifier (issue #12, fix 1)."""
    from tango_steps.tasks import get_task

    task = get_task(task_name)
    problem = task.make_problem(*params) if task_name == "arithmetic" else task.make_problem(params)
    texts = [problem.gold_solution] + [format_solution(problem.steps, a) for a in wrong_answers]
    ro = _rollouts(tiny_tokenizer, [texts], [problem.answer], [problem], task)
    cfg = _cfg(task={"name": task_name}, algorithm={"step_rewards": False})
    out = reward(cfg, round_plan(cfg, 2), ro, pd.DataFrame(columns=["solution"]), None, log=print)
    assert out.rollouts["outcome_reward"].tolist() == [1.0] + [0.0] * len(wrong_answers)
    assert out.rollouts["correct"].tolist() == [True] + [False] * len(wrong_answers)
    # the verifier's RL target is the same oracle: in a verifier round, "correct" marks the truth
    vcfg = _cfg(task={"name": task_name})
    ju = pd.DataFrame(
        {
            "solution": list(range(len(texts))), "verification": [0] * len(texts), "prompt_ids": [[5]] * len(texts),
            "response_ids": [[6]] * len(texts), "final_verdict": [True] * len(texts),
            "format_score": [1.0] * len(texts), "truncated": [False] * len(texts),
            "step_verdicts": [None] * len(texts),
        }
    )  # fmt: skip
    vout = reward(vcfg, round_plan(vcfg, 1), ro, ju, None, log=print)
    assert vout.judgments["solution_correct"].tolist() == [True] + [False] * len(wrong_answers)


def test_generator_round_rewards_and_batch(tiny_model_dir, tiny_tokenizer):
    cfg = _cfg()
    plan = round_plan(cfg, 2)  # first generator round
    assert plan_dict(plan)["slot"] == "generator" and plan.generator_step == 0
    right = format_solution(["1 + 2 = 3", "3 + 4 = 7"], "7")
    wrong = format_solution(["1 + 2 = 3", "3 + 4 = 8"], "8")
    ro = _rollouts(tiny_tokenizer, [[right, wrong], [wrong, wrong]], ["7", "8"])
    ju = pd.DataFrame(
        {
            "solution": [0, 1, 2, 3],
            "verification": [0] * 4,
            "step_verdicts": [[True, True], [True, False], None, [True, True]],
            "final_verdict": [True, False, None, True],
            "format_score": [1.0, 1.0, 0.0, 1.0],
            "truncated": [False] * 4,
        }
    )
    out = reward(cfg, plan, ro, ju, None, log=lambda s: None)
    assert out.rollouts["outcome_reward"].tolist() == [1.0, 0.0, 1.0, 1.0]
    assert out.alpha == pytest.approx(alpha_schedule(0, 4, 0.1, 1e-3, "exp")) == pytest.approx(0.1)
    batch = out.generator_batch
    assert out.verifier_batch is None and batch["sample_weights"] is None
    assert [len(a) for a in batch["advantages"]] == [len(r) for r in ro["response_ids"]]
    adv = [torch.tensor(a) for a in batch["advantages"]]
    assert adv[0][0] > 0 > adv[1][0]  # the right answer of a mixed group is pushed up
    # group 2: same outcome for both and solution 2's verdicts unusable: only solution 3's step part
    assert torch.all(adv[2] == 0)
    assert out.rollouts["step_rewards"].tolist()[2] is None
    # step rewards enter at the last token of each step: the advantage changes only there
    ends = sampled_step_end_tokens(tiny_tokenizer, list(ro["response_ids"][1]), parse_solution(wrong).step_spans)
    diffs = (adv[1][:-1] - adv[1][1:]).abs() > 1e-7
    assert set(torch.nonzero(diffs).flatten().tolist()) <= set(ends)
    assert out.metrics["reward/groups_with_signal_frac"] == 0.5


def test_grpo_variant_uses_no_step_rewards(tiny_model_dir, tiny_tokenizer):
    cfg = _cfg(algorithm={"step_rewards": False})
    plan = round_plan(cfg, 2)
    right = format_solution(["1 + 2 = 3"], "3")
    ro = _rollouts(tiny_tokenizer, [[right, format_solution(["1 + 2 = 4"], "4")]], ["3"])
    out = reward(cfg, plan, ro, pd.DataFrame(columns=["solution"]), None, log=lambda s: None)
    assert out.alpha == 0.0
    a0, a1 = (torch.tensor(a) for a in out.generator_batch["advantages"])
    assert torch.allclose(a0, a0[0].expand_as(a0)) and a0[0] > 0 > a1[0]  # outcome only: constant per response


def test_verifier_round_rewards_weights_and_state(tiny_model_dir, tiny_tokenizer):
    cfg = _cfg()
    plan = round_plan(cfg, 1)
    assert plan_dict(plan)["slot"] == "verifier"
    right = format_solution(["1 + 2 = 3"], "3")
    wrong = format_solution(["1 + 2 = 4"], "4")
    ro = _rollouts(tiny_tokenizer, [[right], [wrong], [wrong]], ["3", "3", "3"])
    verdict_texts = [format_verification([True], True), format_verification([False], False)]
    ids = [tiny_tokenizer(t, add_special_tokens=False)["input_ids"] for t in verdict_texts]
    ju = pd.DataFrame(
        {
            "solution": [0, 0, 1, 1, 2, 2],
            "verification": [0, 1] * 3,
            "prompt_ids": [[5, 6]] * 6,
            "response_ids": [ids[0], ids[1], ids[0], ids[1], ids[1], ids[1]],
            "final_verdict": [True, False, True, False, False, False],
            "format_score": [1.0] * 6,
            "truncated": [False] * 6,
            "step_verdicts": [[True], [False], [True], [False], [False], [False]],
        }
    )
    out = reward(cfg, plan, ro, ju, None, log=lambda s: None)
    j = out.judgments
    expected = [verifier_reward(v, c, 1.0, 0.8) for v, c in zip(ju["final_verdict"], [1, 1, 0, 0, 0, 0], strict=True)]
    assert j["verifier_reward"].tolist() == pytest.approx(expected)
    adv = torch.tensor(j["advantage"].tolist())
    assert adv[4] == adv[5] == 0  # same reward within the group
    assert adv[0] > 0 > adv[1] and adv[3] > 0 > adv[2]
    w = torch.tensor(j["sample_weight"].tolist())
    assert w.mean() == pytest.approx(1.0) and w[0] > w[2]  # the rarer class (1 right of 3) weighs more
    assert VerifierReweighter.from_dict(out.reweighter).updates == 1
    assert out.reweighter["ema_correct"] == 1.0 and out.reweighter["ema_incorrect"] == 2.0
    b = out.verifier_batch
    assert b["sample_weights"] == pytest.approx(w.tolist())
    assert all(len(set(a)) == 1 for a in b["advantages"])  # a sequence-level advantage on every token
    assert out.generator_batch is None and out.alpha is None


def test_binary_and_process_metrics_by_hand():
    m = binary_metrics([True, True, False, None], [True, False, False, True], "v/")
    assert m == pytest.approx(
        {"v/accuracy": 0.5, "v/balanced_accuracy": 0.5, "v/precision": 0.5, "v/recall": 0.5, "v/f1": 0.5}
    )
    # erroneous samples (true first error >= 0): 1 of 2 located; correct samples: 2 of 3 say -1
    p = process_f1([2, 0, -1, -1, 1], [2, 1, -1, -1, -1])
    assert p["process_acc_erroneous"] == 0.5 and p["process_acc_correct"] == pytest.approx(2 / 3)
    assert p["process_f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert process_f1([-1], [-1])["process_f1"] == 0.0  # one class missing


def test_failure_switch(monkeypatch):
    maybe_fail(2, "judge")  # unset: nothing happens
    monkeypatch.setenv("TANGO_FAIL_AT", "2:judge")
    maybe_fail(1, "judge")
    maybe_fail(2, "reward")
    with pytest.raises(RuntimeError, match="failure injected"):
        maybe_fail(2, "judge")
    monkeypatch.setenv("TANGO_FAIL_AT", "1:sample_shard0:once,2:sample_shard1")
    maybe_fail(1, "sample_shard0", attempt=1)  # a retry of a ':once' target passes
    maybe_fail(1, "sample_shard1")
    for stage, attempt in (("sample_shard0", 0), ("sample_shard1", 5)):
        with pytest.raises(RuntimeError, match="failure injected"):
            maybe_fail(1 if stage == "sample_shard0" else 2, stage, attempt)


def test_round_data_is_a_pure_function_of_seed_and_round():
    cfg = _cfg()
    a, b = round_problems(cfg, 3, 8), round_problems(cfg, 3, 8)
    assert [p.id for p in a] == [p.id for p in b]
    assert {p.id for p in round_problems(cfg, 4, 8)} != {p.id for p in a}
    held = {p.id for p in heldout_problems(cfg)}
    assert not held & {p.id for r in range(1, 6) for p in round_problems(cfg, r, 32)}


def test_unusable_step_verdicts_are_wrong_in_process_f1():
    """ProcessBench protocol (docs/method.md §8): no usable prediction is right on no solution (issue #12, fix 3)."""
    from tango_steps.method.metrics import NO_PREDICTION, predicted_first_error, process_metrics

    assert predicted_first_error([True, False, False]) == 1
    assert predicted_first_error([True, True]) == -1
    assert predicted_first_error(None) == NO_PREDICTION
    table = pd.DataFrame(
        {
            "correct": [True, True, False, False, False],
            "first_error": [-1, -1, 1, 0, -1],  # the last one stopped early: left out
            "step_labels": [[True, True], [True, True], [True, False], [False], [True]],
            # row 1: count != K (unusable) on a CORRECT solution must not count as "no error"
            "step_verdicts": [[True, True], None, [True, False], None, [True]],
        }
    )
    table["predicted_first_error"] = table["step_verdicts"].map(predicted_first_error)
    m = process_metrics(table)
    assert m["eval/verifier_process_acc_correct"] == 0.5  # it was 1.0 when unusable counted as "none"
    assert m["eval/verifier_process_acc_erroneous"] == 0.5
    assert m["eval/verifier_process_f1"] == pytest.approx(0.5)
    assert m["eval/verifier_process_excluded"] == 1


def test_oracle_step_verdicts_are_the_exact_labels(tiny_model_dir, tiny_tokenizer, tmp_path):
    """The study's ceiling arm: step rewards from the task's exact labels, and a noisy copy of them."""
    from tango_steps.round.judge import judge, oracle_judgments
    from tango_steps.tasks import get_task

    task = get_task("arithmetic")
    p = task.make_problem(12, [("+", 7), ("*", 3), ("-", 5)])
    texts = [p.gold_solution, format_solution(["12 + 7 = 19", "19 * 3 = 56", "56 - 5 = 51"], "51")]
    ro = _rollouts(tiny_tokenizer, [texts], [p.answer], [p], task)
    ro["step_labels"] = [task.check(p, t).step_labels for t in texts]
    cfg = _cfg(algorithm={"step_verdicts": "oracle"})
    plan = round_plan(cfg, 2)
    ju, res = judge(cfg, plan, tiny_model_dir.parent, ro, log=print)  # no verifier is loaded
    assert ju["step_verdicts"].tolist() == [[True, True, True], [True, False, False]]
    assert ju["final_verdict"].tolist() == [True, False] and res.metrics["judge/first_incorrect_1"] == 0.5
    out = reward(cfg, plan, ro, ju, None, log=print)
    assert out.rollouts["step_rewards"].tolist() == [[1 / 3] * 3, [1 / 3, -1 / 3, -1 / 3]]
    # noisy: each label flipped with the given probability, seeded
    many = pd.DataFrame({"step_labels": [[True] * 10] * 400, "label_correct": [True] * 400})
    noisy = oracle_judgments(many, "noisy_oracle", 0.25, seed=1)
    flipped = sum(not v for vs in noisy["step_verdicts"] for v in vs) / 4000
    assert 0.23 < flipped < 0.27
    assert (
        noisy["step_verdicts"].tolist()
        == oracle_judgments(many, "noisy_oracle", 0.25, seed=1)["step_verdicts"].tolist()
    )
    assert oracle_judgments(many, "oracle", 0.25, seed=1)["step_verdicts"].tolist() == [[True] * 10] * 400
    data = tmp_path / "gsm8k.jsonl"
    data.write_text('{"question": "1 + 2?", "answer": "1 + 2 = 3\\n#### 3"}\n')
    dataset = {"name": "dataset", "params": {"benchmark": "gsm8k", "path": str(data)}}
    with pytest.raises(ValueError, match="needs exact step labels"):
        TangoConfig.model_validate({"task": dataset, "algorithm": {"step_verdicts": "oracle"}})


ALARM = {"majority": 0.95, "min_format": 0.5}  # the schema's defaults (evaluation.collapse_*)


def test_verifier_alarm():
    from tango_steps.method.metrics import verifier_alarm

    healthy = {"eval/verifier_says_correct_frac": 0.4, "eval/verifier_format_ok_frac": 0.97}
    assert verifier_alarm(healthy, **ALARM) is None
    assert "100% of held-out verdicts are INCORRECT" in verifier_alarm(
        {**healthy, "eval/verifier_says_correct_frac": 0.0}, **ALARM
    )
    assert "96% of held-out verdicts are CORRECT" in verifier_alarm(
        {**healthy, "eval/verifier_says_correct_frac": 0.96}, **ALARM
    )
    assert "17% of its held-out verifications are well-formed" in verifier_alarm(
        {**healthy, "eval/verifier_format_ok_frac": 0.17}, **ALARM
    )
    assert verifier_alarm({**healthy, "eval/verifier_says_correct_frac": 0.9}, **{**ALARM, "majority": 0.9}) is not None


def test_step_verdict_histogram():
    from tango_steps.method.metrics import step_verdict_histogram

    h = step_verdict_histogram([[True, True], [False, True], [True, True, False], None, [True] * 4 + [False]])
    assert h == {
        "judge/first_incorrect_none": 0.2, "judge/first_incorrect_0": 0.2, "judge/first_incorrect_1": 0.0,
        "judge/first_incorrect_2": 0.2, "judge/first_incorrect_3": 0.0, "judge/first_incorrect_4plus": 0.2,
        "judge/step_verdicts_unusable": 0.2,
    }  # fmt: skip


def test_heldout_set_is_shared_by_every_seed():
    """One fixed held-out set per task, the same for every seed and variant (paired comparisons)."""
    a, b = heldout_problems(_cfg(seed=0)), heldout_problems(_cfg(seed=7))
    assert len(a) == 500 and [p.id for p in a] == [p.id for p in b]
    assert {p.id for p in round_problems(_cfg(seed=0), 1, 8)} != {p.id for p in round_problems(_cfg(seed=7), 1, 8)}


def test_hacking_diagnostics_by_hand():
    from tango_steps.method.metrics import hacking_diagnostics

    table = pd.DataFrame(
        {
            "correct": [True, True, False, False],
            "final_verdict": [True, False, False, None],
            "step_verdicts": [[True, True], [True], [True, False], None],
            "step_labels": [[True, True], [True, True], [False, False], [True]],
        }
    )
    d = hacking_diagnostics(table)
    assert d["eval/verifier_acc_on_correct"] == 0.5 and d["eval/verifier_acc_on_wrong"] == 1.0
    # right verdicts with usable steps: rows 0 and 2; row 2's steps differ from the labels
    assert d["eval/verifier_right_verdict_wrong_steps"] == 0.5
    assert d["eval/verifier_step_mismatch_frac"] == 0.25  # row 3 unusable


def test_sft_arm_batch_is_gold_and_its_update_is_the_sft_gradient(tiny_model_dir, tiny_tokenizer):
    """The study's floor: advantage 1 on gold tokens through PPO-clip at ratio 1 is the NLL gradient."""
    from tango_steps.method.loss import ppo_clip_loss
    from tango_steps.models.loading import load_model
    from tango_steps.round.update import sft_batch

    cfg = _cfg(
        algorithm={"generator_objective": "sft", "step_rewards": False, "sft_sequences": 6},
        generator_update={"kl_coef": 0.0, "entropy_coef": 0.0},
    )
    batch = sft_batch(cfg, 2, tiny_tokenizer)
    golds = [p.gold_solution for p in round_problems(cfg, 2, 6)]
    assert [tiny_tokenizer.decode(r, skip_special_tokens=True) for r in batch["response_ids"]] == golds
    assert all(a == [1.0] * len(r) for a, r in zip(batch["advantages"], batch["response_ids"], strict=True))

    model = load_model(str(tiny_model_dir), "float32")
    seqs = [p + r for p, r in zip(batch["prompt_ids"], batch["response_ids"], strict=True)]
    width = max(map(len, seqs))
    ids = torch.tensor([s + [tiny_tokenizer.pad_token_id] * (width - len(s)) for s in seqs])
    attn = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    resp = torch.zeros(len(seqs), width - 1)
    for i, p in enumerate(batch["prompt_ids"]):
        resp[i, len(p) - 1 : len(seqs[i]) - 1] = 1
    logp = torch.log_softmax(model(input_ids=ids, attention_mask=attn).logits[:, :-1], -1)
    logp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)

    def grads(loss):
        model.zero_grad()
        loss.backward(retain_graph=True)
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    loss, _ = ppo_clip_loss(logp, logp.detach(), resp, resp, clip_eps=0.2, kl_coef=0.0, entropy_coef=0.0)
    nll = -(logp * resp).sum() / resp.sum()
    assert torch.allclose(grads(loss), grads(nll), atol=1e-6)
    with pytest.raises(ValueError, match=r"needs generator_update\.kl_coef and entropy_coef 0"):
        _cfg(algorithm={"generator_objective": "sft"})


def test_sft_arm_updates_take_each_optimizer_step_at_ratio_1(monkeypatch, tmp_path, tiny_model_dir):
    """round.update hands the sft objective's generator update ratio_to_current (no PPO clip across steps)
    and trains it on the round's gold solutions, tokenised there (the reward stage loads no tokenizer)."""
    import tango_steps.training.update as training
    from tango_steps.models.loading import load_tokenizer
    from tango_steps.round.update import sft_batch, update

    seen = []
    monkeypatch.setattr(training, "rl_update", lambda ckpt, b, settings, *a, **k: seen.append((settings, b)) or {
        "loss": 0.0, "grad_norm": 0.0, "seconds": 0.0})  # fmt: skip
    batch = {"prompt_ids": [[1]], "response_ids": [[2]], "advantages": [[1.0]], "sample_weights": None}
    sft = _cfg(algorithm={"generator_objective": "sft", "step_rewards": False, "sft_sequences": 3},
               generator_update={"kl_coef": 0.0, "entropy_coef": 0.0, "optimizer_steps": 4})  # fmt: skip
    ckpt = tiny_model_dir.parent
    for cfg, role, b in ((sft, "generator", None), (sft, "verifier", batch), (_cfg(), "generator", batch)):
        update(cfg, round_plan(cfg, 2), role, ckpt, ckpt, b, tmp_path / "out", log=lambda *_: None)
    assert [s.ratio_to_current for s, _ in seen] == [True, False, False]
    gold = sft_batch(sft, 2, load_tokenizer(str(tiny_model_dir)))
    assert seen[0][1].response_ids == gold["response_ids"] and len(gold["response_ids"]) == 3
    assert seen[1][1].response_ids == [[2]]
    with pytest.raises(ValueError, match="no verifier batch for round 2"):
        update(_cfg(), round_plan(_cfg(), 2), "verifier", ckpt, ckpt, None, tmp_path / "out", log=lambda *_: None)


def test_round_plan_evaluates_every_k_and_the_last_n_rounds():
    """``evaluation.every`` / ``evaluation.last`` reach the plan (a 'final' over the last checkpoints needs them)."""
    cfg = _cfg(rounds=22, evaluation={"every": 7, "last": 4})
    assert [k for k in range(1, 23) if round_plan(cfg, k).evaluate] == [7, 14, 19, 20, 21, 22]
    assert all(round_plan(_cfg(), k).evaluate for k in range(1, 6))


def test_a_non_finite_update_names_the_round_and_model_and_writes_nothing(tmp_path, tiny_model_dir, tiny_tokenizer):
    """Issue #17: NaN advantages make the loss non-finite; the update stops before writing anything,
    with an error naming the round and the model, and the checkpoint it started from is unchanged."""
    from tango_steps.round.update import update
    from tango_steps.training.checkpoint import init_checkpoint
    from tango_steps.training.settings import UpdateSettings

    ckpt = init_checkpoint(str(tiny_model_dir), tmp_path / "ckpt0", UpdateSettings.of())
    before = (ckpt / "model" / "model.safetensors").read_bytes()
    ids = [tiny_tokenizer("1 + 1 =")["input_ids"]] * 2
    batch = {"prompt_ids": ids, "response_ids": [[5, 6, 7]] * 2, "advantages": [[float("nan")] * 3] * 2}
    cfg = _cfg()
    plan = round_plan(cfg, 3)
    with pytest.raises(FloatingPointError, match=r"round 3, generator update: non-finite loss"):
        update(cfg, plan, "generator", ckpt, ckpt, batch, tmp_path / "out", log=lambda m: None)
    assert not (tmp_path / "out").exists()
    assert (ckpt / "model" / "model.safetensors").read_bytes() == before


def test_the_chance_line_is_the_best_content_blind_process_f1():
    """Issue #36: a verifier's process F1 means something only above what a rule reading nothing reaches: flag the
    most common first-error step on a fraction q of the solutions, "no error" on the rest. Its closed form equals a
    brute-force search over every step and q, and process_metrics reports it beside process F1."""
    import itertools

    from tango_steps.method.metrics import chance_process_f1, process_metrics

    def brute(fe: list[int]) -> float:
        err = [t for t in fe if t >= 0]
        best = 0.0
        for k, q in itertools.product(sorted(set(err)), [i / 2000 for i in range(2001)]):
            a, c = q * err.count(k) / len(err), 1 - q
            best = max(best, 2 * a * c / (a + c) if a + c else 0.0)
        return best

    for fe in ([-1, -1, 0, 0], [-1, 0, 1], [-1, -1, -1, 0, 0, 1, 2, 2, 2, 3], [-1, 4, 4, 4, 4, 1]):
        assert chance_process_f1(fe)["process_f1_chance"] == pytest.approx(brute(fe), abs=1e-5), fe
    assert chance_process_f1([-1, -1, 0, 0])["process_f1_chance"] == pytest.approx(0.5)
    assert (
        chance_process_f1([-1, -1])["process_f1_chance"] == 0.0
        and chance_process_f1([0, 1])["process_f1_chance"] == 0.0
    )
    # reading nothing, a rule of that kind reaches the line in expectation (here exactly, q = 1/(1+sqrt(1/2)))
    table = pd.DataFrame(
        {
            "predicted_first_error": [-1, -1, -1, -1],
            "first_error": [-1, -1, 0, 1],
            "correct": [True, True, False, False],
            "step_labels": [[True], [True], [False], [True, False]],
        }
    )
    m = process_metrics(table)
    assert m["eval/verifier_process_f1"] == 0.0  # never flagging: no error found
    assert m["eval/verifier_process_f1_chance"] == pytest.approx(chance_process_f1([-1, -1, 0, 1])["process_f1_chance"])
