"""Configuration validation: errors name the field (tango_steps.config)."""

from __future__ import annotations

import pytest

from tango_steps.config import ConfigError, RolloutConfig, TaskConfig, load_yaml, parse_overrides, validate


def test_defaults_and_overrides():
    cfg = validate(RolloutConfig, {"engine": "hf", "max_prompt_tokens": 64})
    assert cfg.engine == "hf" and cfg.max_prompt_tokens == 64 and cfg.on_long_prompt == "truncate"
    assert validate(TaskConfig, {}).name == "arithmetic"


@pytest.mark.parametrize(
    ("data", "msg"),
    [
        ({"engine": "vlm"}, r"engine: unknown rollout engine 'vlm'; known: auto, hf, vllm"),
        ({"gpu_memory_utilization": 1.5}, r"gpu_memory_utilization: Input should be less than or equal to 1"),
        ({"on_long_prompt": "drop"}, r"on_long_prompt: Input should be 'truncate' or 'reject'"),
        ({"max_prompt_tokens": "many"}, r"max_prompt_tokens: Input should be a valid integer"),
        ({"enginee": "hf"}, r"enginee: Extra inputs are not permitted"),
    ],
)
def test_errors_name_the_field(data, msg):
    with pytest.raises(ConfigError, match=msg):
        validate(RolloutConfig, data, source="recipe.yaml")


def test_load_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_yaml(tmp_path / "list.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert load_yaml(tmp_path / "empty.yaml") == {}


def test_whole_recipe_errors_name_each_field(tmp_path):
    from tango_steps.config import load_config

    (tmp_path / "r.yaml").write_text(
        "rounds: 0\nbatch: {generator_prompts: -4}\ngenerator_sampling: {top_p: 1.5}\n"
        "algorithm: {alpha0: 0.01, alpha_min: 0.1}\nrolout: {}\ntask: {name: arithmetic, params: {max_ops: 9}}\n"
    )
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "r.yaml")
    msg = str(e.value)
    for fragment in [
        "r.yaml",
        "rounds: Input should be greater than or equal to 1",
        "batch.generator_prompts: Input should be greater than or equal to 1",
        "generator_sampling.top_p: Input should be less than or equal to 1",
        "algorithm: alpha_min (0.1) must not exceed alpha0 (0.01)",
        "rolout: Extra inputs are not permitted",
        "task: need 1 <= min_ops <= max_ops <= 6",
    ]:
        assert fragment in msg, (fragment, msg)


def test_overrides_with_dotted_keys():
    from tango_steps.config import load_config
    from tango_steps.training.settings import update_settings

    cfg = load_config(overrides={"rounds": 3, "generator_update.lora": {"r": 4}, "algorithm.estimator": "rloo"})
    assert cfg.rounds == 3 and cfg.algorithm.estimator == "rloo"
    s = update_settings(cfg.generator_update, temperature=0.7, seed=5)
    assert s.section.lora.r == 4 and s.temperature == 0.7 and s.seed == 5
    with pytest.raises(ConfigError, match="'rounds' is not a section"):
        load_config(overrides={"rounds": 3, "rounds.x": 1})


def test_command_line_overrides_are_yaml_values_and_name_a_bad_pair():
    got = parse_overrides(["generator_update.learning_rate=1.0e-4", "schedule.train_verifier=false", "task.name=x"])
    assert got == {"generator_update.learning_rate": 1e-4, "schedule.train_verifier": False, "task.name": "x"}
    with pytest.raises(ConfigError, match="'seed' is not KEY=VALUE"):
        parse_overrides(["seed"])


def test_runtime_settings_take_their_defaults_from_the_schema():
    """Every default lives once, in tango_steps/config.py: the update's settings hold their config section whole
    (no field mirrored), and the sampling settings' shared fields default to the schema's."""
    import dataclasses

    from tango_steps.config import SamplingConfig, UpdateConfig
    from tango_steps.rollout import SamplingSettings
    from tango_steps.training.settings import UpdateSettings

    mirrored = [f.name for f in dataclasses.fields(UpdateSettings) if f.name in UpdateConfig.model_fields]
    assert mirrored == [] and UpdateSettings.of().section == UpdateConfig()
    shared = [f for f in dataclasses.fields(SamplingSettings) if f.name in SamplingConfig.model_fields]
    assert len(shared) >= 4
    for f in shared:
        assert f.default == SamplingConfig.model_fields[f.name].default, f.name


def test_the_maths_take_their_knobs_as_required_arguments():
    """The method layer holds no default of a configured knob (docs/architecture.md): each is required, so the
    schema's default is the only one and a caller cannot silently get another."""
    import dataclasses
    import inspect

    from tango_steps.method.advantages import VerifierReweighter
    from tango_steps.method.loss import ppo_clip_loss
    from tango_steps.method.metrics import verifier_alarm
    from tango_steps.method.rewards import verifier_reward
    from tango_steps.method.schedule import alpha_schedule, plan_round, total_generator_updates

    knobs = {
        ppo_clip_loss: ("clip_eps", "kl_coef", "entropy_coef"),
        verifier_alarm: ("majority", "min_format"),
        verifier_reward: ("gamma",),
        alpha_schedule: ("alpha0", "alpha_min", "kind"),
        plan_round: ("verifier_warmup_rounds", "generator_per_verifier"),
        total_generator_updates: ("verifier_warmup_rounds", "generator_per_verifier"),
    }
    for fn, names in knobs.items():
        params = inspect.signature(fn).parameters
        assert all(params[n].default is inspect.Parameter.empty for n in names), fn.__name__
    fields = {f.name: f for f in dataclasses.fields(VerifierReweighter)}
    assert all(fields[n].default is dataclasses.MISSING for n in ("decay", "power"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"algorithm.estimator": "ppo"}, "algorithm.estimator: unknown advantage estimator 'ppo'; known: grpo, "
         "reinforce_pp, rloo"),
        ({"rollout.engine": "vlm"}, "rollout.engine: unknown rollout engine 'vlm'; known: auto, hf, vllm"),
        ({"task.name": "sudoku"}, "task: unknown task 'sudoku'; known: arithmetic, dataset, last_letters"),
        ({"template": "chatml"}, "template: unknown prompt template 'chatml'; known: compact, full"),
    ],
)  # fmt: skip
def test_names_are_checked_against_the_registries_with_one_error(overrides, message):
    from tango_steps.config import load_config

    with pytest.raises(ConfigError) as e:
        load_config(overrides=overrides)
    assert message in str(e.value)


def test_the_estimator_names_are_the_registered_estimators():
    from tango_steps.config import ESTIMATORS
    from tango_steps.method.advantages import OUTCOME_ESTIMATORS, STEP_ESTIMATORS, generator_estimator_names

    # the configuration validates names from ESTIMATORS without importing torch: they must be the registered ones
    assert sorted(ESTIMATORS) == generator_estimator_names()
    assert set(STEP_ESTIMATORS) == set(OUTCOME_ESTIMATORS)


def test_the_study_arms_names_are_the_registered_ones():
    """algorithm.step_verdicts and algorithm.generator_objective list their names without importing the registries
    (tango_steps.round.arms): the two must agree."""
    import typing

    from tango_steps.config import AlgorithmConfig
    from tango_steps.round.arms import EXACT_LABEL_VERDICTS, GENERATOR_OBJECTIVES

    fields = AlgorithmConfig.model_fields
    assert set(typing.get_args(fields["step_verdicts"].annotation)) == {"verifier", *EXACT_LABEL_VERDICTS}
    assert set(typing.get_args(fields["generator_objective"].annotation)) == set(GENERATOR_OBJECTIVES)


def test_step_resources_have_disk_and_shared_memory_with_metaflows_defaults():
    """Issue #35, defect 3: without `disk` and `shared_memory` a step's pod got Metaflow's 10,240 MB disk and the
    runtime's 64 MiB /dev/shm whatever the recipe said. Their defaults are Metaflow's own (a recipe that sets
    nothing gets the pods it got before); a /dev/shm as large as the step's memory is refused, naming the step."""
    from tango_steps.config import StepResources, load_config

    assert StepResources().disk == 10240 and StepResources().shared_memory is None
    rollout = {"gpu": 2, "memory": 200000, "disk": 300000, "shared_memory": 4096}
    cfg = load_config(overrides={"resources.rollout": rollout})
    assert (cfg.resources["rollout"].disk, cfg.resources["rollout"].shared_memory) == (300000, 4096)
    with pytest.raises(ConfigError, match=r"resources.judge: shared_memory \(70000 MiB\) must be below memory"):
        load_config(overrides={"resources.judge": {"memory": 64000, "shared_memory": 70000}})
    with pytest.raises(ConfigError, match=r"resources.rollout.disk: Input should be greater than or equal to 1"):
        load_config(overrides={"resources.rollout.disk": 0})


def test_round0_runs_under_its_own_resources_else_the_evaluations():
    """Issue #35, defect 2: TangoFlow's `start` builds round 0 (both models loaded, stored, evaluated with the
    rollout engine) and had no @resources: a default pod. It runs under `resources.round0`, and without one under
    `resources.evaluate` (the same engine over the same models); the validated recipe and the flows' Config
    (`parse_recipe`, what `@resources` reads) resolve it alike."""
    import yaml

    from tango_steps.config import StepResources, load_config, parse_recipe

    evaluate = {"cpu": 16, "memory": 200000, "gpu": 2, "disk": 300000, "shared_memory": 4096}
    cfg = load_config(overrides={"resources.evaluate": evaluate})
    assert cfg.step_resources("round0") == StepResources(**evaluate) == cfg.step_resources("evaluate")
    assert parse_recipe(yaml.safe_dump({"resources": {"evaluate": evaluate}}))["resources"]["round0"] == evaluate
    own = {"cpu": 8, "memory": 100000, "gpu": 1, "disk": 150000}
    cfg = load_config(overrides={"resources": {"evaluate": evaluate, "round0": own}})
    assert cfg.step_resources("round0") == StepResources(**own)
    parsed = parse_recipe(yaml.safe_dump({"resources": {"evaluate": evaluate, "round0": own}}))["resources"]
    assert parsed["round0"] == StepResources(**own).model_dump() and parsed["evaluate"] == evaluate
    assert load_config().step_resources("round0") == StepResources()  # neither: the schema's defaults
    with pytest.raises(ValueError, match=r"unknown step name 'round1'; known: start, .*, round0"):
        cfg.step_resources("round1")


def test_every_resources_decorator_passes_every_step_resources_field():
    """The flows' @resources take each StepResources field from the recipe (a field the decorator is not given
    is silently Metaflow's default on the pod), and TangoFlow's `start` takes `round0`'s."""
    import ast
    from pathlib import Path

    from tango_steps.config import RESOURCE_STEPS, StepResources

    flows = Path(__file__).resolve().parents[2] / "flows"
    seen: dict[str, str] = {}
    for name in ("tango_flow.py", "tango_round_flow.py", "ablation_flow.py"):
        for node in ast.walk(ast.parse((flows / name).read_text())):
            if not isinstance(node, ast.FunctionDef):
                continue
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and getattr(deco.func, "id", None) == "resources":
                    kw = {k.arg: ast.unparse(k.value) for k in deco.keywords}
                    assert set(kw) == set(StepResources.model_fields), (name, node.name, sorted(kw))
                    steps = {v.split(".")[2] for v in kw.values()}
                    assert len(steps) == 1 and steps <= set(RESOURCE_STEPS), (name, node.name, kw)
                    step = steps.pop()
                    assert all(v == f"config.resources.{step}.{k}" for k, v in kw.items()), kw
                    seen[f"{name}:{node.name}"] = step
    assert seen["tango_flow.py:start"] == "round0" and seen["ablation_flow.py:init"] == "round0"  # round 0 too
    assert seen["tango_round_flow.py:sample_shard"] == "rollout" and seen["tango_round_flow.py:evaluate"] == "evaluate"
