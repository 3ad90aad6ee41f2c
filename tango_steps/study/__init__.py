"""Studies over the pipeline: the ablation arms and the evaluation on benchmarks."""
