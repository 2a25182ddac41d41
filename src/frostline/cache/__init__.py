"""The activation cache: cut a model at its frost line, store the frozen front's outputs,
and decide when a phase may train on them."""
