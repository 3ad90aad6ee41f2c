"""Card contents for the flows: sample solutions, the verdict browser, reward and update charts (docs/method.md §9).

Each function turns a stage's tables and metrics into a list of Metaflow card components
(``Markdown``, ``Table``, ``VegaChart``); the flows only append them to ``current.card``. Charts are
Vega-Lite specifications with their data inline, so a card needs no service and no network. The tables
read here (``rollouts``, ``judgments``, ``eval_table``) have the columns declared in
:mod:`tango_steps.round.tables`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


# Markdown components render raw HTML (a tag in model output would run: issue #17), links and emphasis,
# and this renderer drops Markdown's backslash escapes. So model text (and data) goes into an HTML block
# of our own (``<div>``, ``<pre>``), HTML-escaped, its line breaks as entities so the block stays one
# block: shown literally, never parsed as HTML or Markdown.
_HTML_ESCAPE = {ord("<"): "&lt;", ord(">"): "&gt;", ord("&"): "&amp;", ord('"'): "&quot;", ord("'"): "&#39;",
                ord("\r"): None}  # fmt: skip


def inert(text: Any) -> str:
    """Text for inside :func:`html_block`: HTML-escaped, on one line."""
    return " ".join(str(text).splitlines()).translate(_HTML_ESCAPE)


def html_block(inner: str, tag: str = "div") -> str:
    """Markdown that is one HTML block: ``inner`` must be escaped (:func:`inert`) or our own markup."""
    return f"<{tag}>{inner}</{tag}>"


def inert_block(text: Any) -> str:
    """A multi-line text shown literally, line breaks kept: one ``<pre>`` block of escaped text."""
    return html_block(str(text).translate(_HTML_ESCAPE).replace("\n", "&#10;"), "pre")


def _mark(ok: Any) -> str:
    return "-" if ok is None or (isinstance(ok, float) and math.isnan(ok)) else ("CORRECT" if ok else "INCORRECT")


def metrics_table(metrics: dict[str, Any], prefix: str = "") -> Any:
    """A two-column table of metrics whose names start with ``prefix`` (docs/method.md §9 inspection)."""
    from metaflow.cards import Table

    rows = [[k, _fmt(v)] for k, v in sorted(metrics.items()) if k.startswith(prefix)]
    return Table(rows or [["(none)", "-"]], headers=["metric", "value"])


def histogram(values: Sequence[float], title: str, field: str = "value") -> Any:
    """A Vega-Lite histogram of ``values`` (docs/method.md §4-§5 reward and advantage distributions)."""
    from metaflow.cards import VegaChart

    data = [{field: float(v)} for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    spec = {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": title,
        "width": 360,
        "height": 160,
        "data": {"values": data},
        "mark": "bar",
        "encoding": {
            "x": {"field": field, "bin": {"maxbins": 30}, "type": "quantitative"},
            "y": {"aggregate": "count", "type": "quantitative"},
        },
    }
    return VegaChart(spec)


def line_chart(history: Sequence[dict[str, Any]], keys: Sequence[str], title: str) -> Any:
    """A Vega-Lite line chart of metrics across rounds (docs/method.md §8 curves); missing values are left out."""
    from metaflow.cards import VegaChart

    data = [
        {"round": int(row["round"]), "metric": k, "value": float(row[k])}
        for row in history
        for k in keys
        if row.get(k) is not None and not (isinstance(row[k], float) and math.isnan(row[k]))
    ]
    spec = {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": title,
        "width": 420,
        "height": 180,
        "data": {"values": data},
        "mark": {"type": "line", "point": True},
        "encoding": {
            "x": {"field": "round", "type": "quantitative"},
            "y": {"field": "value", "type": "quantitative"},
            "color": {"field": "metric", "type": "nominal"},
        },
    }
    return VegaChart(spec)


def rollout_components(rollouts: pd.DataFrame, metrics: dict[str, Any], n: int = 6) -> list:
    """Rollout card (docs/method.md §2-§3): summary and sample solutions with their steps numbered."""
    from metaflow.cards import Markdown, Table

    out = [Markdown(f"## Rollout: {len(rollouts)} solutions"), metrics_table(metrics, "rollout/")]
    for _, r in rollouts.head(n).iterrows():
        steps = [[str(k + 1), s, _mark(lab)] for k, (s, lab) in enumerate(zip(r["steps"], _labels(r), strict=False))]
        out.append(
            Markdown(
                html_block(
                    f"<b>{inert(r['prompt_id'])}</b> sample {r['sample']}: {inert(r['question'])}<br>"
                    f"answer <code>{inert(r['answer'])}</code> (gold <code>{inert(r['gold'])}</code>), "
                    f"exact outcome {_mark(r['label_correct'])}{' (truncated)' if r['truncated'] else ''}"
                )
            )
        )
        out.append(Table(steps or [["-", "(no steps)", "-"]], headers=["step", "text", "exact label"]))
    return out


def _labels(row) -> list:
    labels = list(row.get("step_labels") or [])
    return labels + [None] * (len(row["steps"]) - len(labels))


def judge_components(rollouts: pd.DataFrame, judgments: pd.DataFrame, n: int = 8) -> list:
    """Verdict browser (docs/method.md §2, §4-§5): each step beside the verifier's verdict and the exact label.

    Shows, per solution, the final verdict against the true correctness, and the reward and
    advantage the update actually used; then the raw verifier text.
    """
    from metaflow.cards import Markdown, Table

    if judgments is None or len(judgments) == 0:
        return [Markdown("## Judge\nNothing was judged this round (outcome reward only).")]
    out = [Markdown(f"## Verdict browser: {len(judgments)} verifications of {len(rollouts)} solutions")]
    for _, j in judgments.head(n).iterrows():
        r = rollouts.iloc[int(j["solution"])]
        verdicts = list(j["step_verdicts"]) if j["step_verdicts"] is not None else []
        rows = []
        for k, s in enumerate(r["steps"]):
            v = verdicts[k] if k < len(verdicts) else None
            lab = _labels(r)[k]
            agree = "" if v is None or lab is None else ("agree" if v == lab else "DISAGREE")
            rows.append([str(k + 1), s, _mark(v), _mark(lab), agree])
        truth = r.get("correct", r.get("label_correct"))
        used = []
        if "outcome_reward" in r:
            used.append(f"outcome reward {_fmt(r['outcome_reward'])}")
        if "advantage_mean" in r:
            used.append(f"mean token advantage {_fmt(r['advantage_mean'])}")
        if "verifier_reward" in j:
            used.append(f"verifier reward {_fmt(j['verifier_reward'])}, advantage {_fmt(j['advantage'])}")
        out.append(
            Markdown(
                f"### Solution {int(j['solution'])} / verification {int(j['verification'])}\n\n"
                + html_block(
                    f"{inert(r['question'])}<br>final verdict <b>{_mark(j['final_verdict'])}</b>, "
                    f"truth <b>{_mark(truth)}</b>; " + "; ".join(used)
                )
            )
        )
        out.append(
            Table(rows or [["-", "(no steps)", "-", "-", ""]], headers=["step", "generator", "verifier", "exact", ""])
        )
        out.append(Markdown("verifier output:\n\n" + inert_block(str(j["text"])[:1500])))
    return out


def reward_components(rollouts: pd.DataFrame, judgments: pd.DataFrame, metrics: dict[str, Any], alpha: Any) -> list:
    """Reward card (docs/method.md §4-§5): distributions of rewards and advantages, alignment rate, alpha."""
    from metaflow.cards import Markdown

    out = [Markdown(f"## Rewards (alpha = {_fmt(alpha)})"), metrics_table(metrics)]
    out.append(histogram(rollouts["outcome_reward"], "outcome reward r_out"))
    if "step_rewards" in rollouts:
        steps = [x for r in rollouts["step_rewards"] if r for x in r]
        if steps:
            out.append(histogram(steps, "step rewards y_k / K"))
    if "advantage_mean" in rollouts:
        out.append(histogram(rollouts["advantage_mean"], "generator advantage (mean over tokens)"))
    if judgments is not None and "verifier_reward" in judgments:
        out.append(histogram(judgments["verifier_reward"], "verifier reward r_v"))
        out.append(histogram(judgments["advantage"], "verifier advantage"))
    return out


def shard_table_components(stats: Sequence[dict[str, Any]]) -> list:
    """The round's shards side by side (issue #15): prompts, rows, and wall / engine seconds per stage.

    Wall seconds include loading the engine; a shard far slower than the others is a straggler the
    whole round waited for.
    """
    from metaflow.cards import Markdown, Table

    cols = ["shard", "prompts", "solutions", "verifications", "rollout_s", "rollout_engine_s", "judge_s",
            "judge_engine_s", "attempt"]  # fmt: skip
    rows = [[_fmt(s.get(c, "-")) for c in cols] for s in sorted(stats, key=lambda s: s["shard"])]
    wall = [s["rollout_s"] + s["judge_s"] for s in stats]
    slowest = f"; slowest shard {max(wall):.1f} s, mean {sum(wall) / len(wall):.1f} s" if wall else ""
    return [Markdown(f"## Shards: {len(stats)}{slowest}"), Table(rows, headers=cols)]


class CardLog:
    """A stage's log lines printed and shown live on a card (a refreshing card: ``@card(refresh_interval=...)``).

    The card shows the last line (progress bars included); ``card`` is ``current.card``.
    """

    def __init__(self, card: Any, title: str) -> None:
        from metaflow.cards import Markdown

        self.card, self.line = card, Markdown("(starting)")
        card.append(Markdown(f"## {title}"))
        card.append(self.line)
        card.refresh()

    def __call__(self, message: str) -> None:
        print(message)
        self.line.update(f"`{message}`")
        self.card.refresh()  # Metaflow sends at most one refresh per refresh_interval


def update_components(role: str, metrics: dict[str, Any]) -> list:
    """Update card (docs/method.md §6): loss, KL, entropy, clip fraction, gradient norm, or the skip reason."""
    from metaflow.cards import Markdown

    return [Markdown(f"## {role} update"), metrics_table(metrics)]


def evaluate_components(eval_table: pd.DataFrame, metrics: dict[str, Any], n: int = 10) -> list:
    """Evaluation card (docs/method.md §7-§8): metrics and the first held-out solutions with verdicts."""
    from metaflow.cards import Markdown, Table

    cols = ["question", "gold", "correct", "final_verdict", "first_error", "predicted_first_error", "length"]
    sample = eval_table[[c for c in cols if c in eval_table]].head(n).astype(str)
    out = [Markdown("## Held-out evaluation"), metrics_table(metrics), Table.from_dataframe(sample)]
    if metrics.get("eval/verifier_alarm"):
        out.insert(0, Markdown(f"# ALARM: {metrics['eval/verifier_alarm']}"))
    return out


def skipped_evaluation_components(every: int, last: int = 1) -> list:
    """Evaluation card of a round the recipe does not evaluate (``evaluation.every`` / ``last``, docs/method.md §7)."""
    from metaflow.cards import Markdown

    tail = "the last round" if last == 1 else f"the last {last} rounds"
    text = f"Not evaluated this round: the recipe evaluates every {every} rounds and {tail}."
    return [Markdown(f"## Held-out evaluation\n\n{text}")]


ROUND_CHARTS = (
    ("generator held-out accuracy", ("eval/generator_accuracy",)),
    ("verifier F1 (outcome) and process F1", ("eval/verifier_f1", "eval/verifier_process_f1")),
    (
        "verifier health: balanced accuracy, format rate, share of the majority verdict",
        ("eval/verifier_balanced_accuracy", "eval/verifier_format_ok_frac", "eval/verifier_majority_frac"),
    ),
    ("rewards", ("reward/outcome_mean", "reward/verifier_reward_mean")),
    ("alpha", ("generator/alpha",)),
    ("KL to the reference", ("generator_update/kl", "verifier_update/kl")),
    ("held-out response length", ("eval/generator_mean_length",)),
)


def history_components(history: Sequence[dict[str, Any]]) -> list:
    """TangoFlow's charts across rounds (docs/method.md §8): accuracy, F1s, rewards, alpha, KL, length."""
    from metaflow.cards import Markdown

    last = history[-1] if history else {}
    out = [Markdown(f"# Tango: round {last.get('round', 0)} of the run")]
    alarms = [(row.get("round"), row["eval/verifier_alarm"]) for row in history if row.get("eval/verifier_alarm")]
    if alarms:
        lines = "\n".join(f"- round {r}: {a}" for r, a in alarms)
        out.append(Markdown(f"## ALARM: the verifier collapsed in {len(alarms)} round(s)\n{lines}"))
    out += [line_chart(history, keys, title) for title, keys in ROUND_CHARTS]
    return out


ABLATION_CURVES = {
    "generator_accuracy": "generator held-out accuracy",
    "verifier_f1": "verifier outcome F1",
    "verifier_process_f1": "verifier process F1 (exact labels)",
    "mean_outcome_reward": "mean outcome reward of the round's samples",
    "alpha": "alpha (step-advantage weight)",
}


def ablation_components(table: pd.DataFrame) -> list:
    """AblationFlow's card (docs/method.md §8): per task, each curve across rounds, one line per variant (seed mean)."""
    from metaflow.cards import Markdown

    out = []
    for task, t in table.groupby("task", sort=False):
        seeds = sorted(t["seed"].unique())
        out.append(Markdown(f"## {task} (mean over seeds {', '.join(str(s) for s in seeds)})"))
        variants = list(t["variant"].unique())
        for col, title in ABLATION_CURVES.items():
            wide = t.groupby(["round", "variant"])[col].mean().unstack("variant")
            rows = [{"round": int(r), **{v: wide.at[r, v] for v in variants if v in wide}} for r in wide.index]
            out.append(line_chart(rows, variants, f"{task}: {title}"))
    return out
