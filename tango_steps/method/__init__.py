"""The method's formulas (docs/method.md): output formats, rewards, advantages, the policy loss, the schedule,
metrics. Tensors and floats in, tensors and floats out; nothing here reads a configuration."""
