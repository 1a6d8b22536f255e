"""The method's maths as pure functions of tensors and a model: flow matching with partial
conditioning and its samplers (``flow``), one-step distillation targets and loss (``distill``)."""
