"""Evaluate a generator (and a verifier) on benchmarks, one foreach branch per benchmark (docs/method.md §7-§8).

    python flows/eval_flow.py run --generator smollm2-135m --benchmarks gsm8k --limit 50 \\
        --data ../shared/data/benchmarks
    python flows/eval_flow.py run --generator TangoFlow/<run id> --verifier TangoFlow/<run id> \\
        --benchmarks gsm8k,math500,processbench/gsm8k --template compact

``--generator`` / ``--verifier`` take a TangoFlow or TangoRoundFlow run pathspec (its models after
that run / round), a local model directory, or a builtin (``smollm2-135m``). ``processbench/<subset>``
entries evaluate the verifier. Results: the ``results`` DataFrame (one row per benchmark) and a card.
"""

import os

from metaflow import FlowSpec, Parameter, card, current, step


class EvalFlow(FlowSpec):
    """Greedy pass@1 per benchmark and the verifier's ProcessBench F1, joined into one table."""

    generator = Parameter("generator", type=str, default="", help="run pathspec, model directory or builtin")
    verifier = Parameter("verifier", type=str, default="", help="run pathspec, model directory or builtin")
    benchmarks = Parameter("benchmarks", type=str, default="gsm8k", help="comma-separated benchmark names")
    data = Parameter("data", type=str, default="", help="benchmark folder, local or s3:// ($TANGO_BENCHMARKS)")
    limit = Parameter("limit", type=int, default=50, help="problems per benchmark (0: all)")
    max_tokens = Parameter("max-tokens", type=int, default=512, help="generation limit")
    template = Parameter("template", type=str, default="full", help="prompt template: full or compact")
    engine = Parameter("engine", type=str, default="auto", help="rollout engine: auto, hf or vllm")
    prompt_format = Parameter(
        "prompt-format", type=str, default="auto", help="auto (the chat template when the model has one), chat or raw"
    )

    @step
    def start(self):
        """Check every name before any model is loaded, then fan out over the benchmarks."""
        from tango_steps.study.evaluation import check_request

        self.items = check_request(
            self.benchmarks, self.generator, self.verifier, self.template, self.engine, self.limit, self.max_tokens,
            self.prompt_format,
        )  # fmt: skip
        self.next(self.evaluate, foreach="items")

    @step
    def evaluate(self):
        """One benchmark: greedy pass@1 (generator) or ProcessBench F1 (verifier)."""
        from tango_steps.study.evaluation import run_item

        self.item = self.input
        self.table, self.metrics = run_item(
            self.item, self.generator, self.verifier, self.data or None, self.template, self.engine,
            self.limit or None, self.max_tokens, prompt_format=self.prompt_format,
        )  # fmt: skip
        self.next(self.join)

    @step
    def join(self, inputs):
        """One results table (pandas), one row per benchmark."""
        import pandas as pd

        self.results = pd.DataFrame([{"benchmark": i.item, **i.metrics} for i in inputs])
        self.tables = {i.item: i.table for i in inputs}
        self.next(self.end)

    @card(type="blank")
    @step
    def end(self):
        """The results table as a card."""
        from metaflow.cards import Markdown, Table

        head = f"# EvalFlow {current.run_id}\n\ngenerator `{self.generator}`, verifier `{self.verifier or '-'}`"
        current.card.append(
            Markdown(f"{head}, limit {self.limit}, template `{self.template}`, prompt format `{self.prompt_format}`")
        )
        current.card.append(Table.from_dataframe(self.results.round(4)))
        print(self.results.to_string(index=False))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    EvalFlow()
