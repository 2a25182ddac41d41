"""The model as frostline sees it: the layer tree, and how each layer runs inside `fit`."""
