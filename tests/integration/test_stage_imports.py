"""The reward stage imports no model library: checked in a fresh interpreter."""

from __future__ import annotations


def test_reward_parses_nothing_and_imports_no_model_library():
    """Issue #13: the rollout parses each completion and aligns its steps once; ``reward`` reads the columns,
    so the reward step of a flow never loads a tokenizer or imports transformers."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import sys
        import pandas as pd
        import tango_steps.method.formats as formats
        from tango_steps.config import TangoConfig
        from tango_steps.round.plan import round_plan
        from tango_steps.round.reward import reward

        formats.parse_solution = None  # any second parse would fail here
        cfg = TangoConfig.model_validate({"schedule": {"verifier_warmup_rounds": 1}, "rounds": 5})
        ro = pd.DataFrame({
            "prompt_index": [0, 0], "text": ["a", "b"], "truncated": [False, False], "answer": ["1", "2"],
            "label_correct": [True, False], "prompt_ids": [[1], [1]], "response_ids": [[5, 6, 7], [5, 6]],
            "step_end_tokens": [[1, 2], [0, 1]],
        })
        ju = pd.DataFrame({"solution": [0, 1], "step_verdicts": [[True, True], [True, False]],
                           "final_verdict": [True, False]})
        out = reward(cfg, round_plan(cfg, 2), ro, ju, None, log=lambda s: None)
        assert out.alpha > 0 and out.generator_batch is not None
        print(sorted(m for m in ("transformers", "tokenizers", "vllm") if m in sys.modules))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
