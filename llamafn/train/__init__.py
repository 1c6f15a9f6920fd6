"""Training the project's own small models, in the same functional style: the loss is a pure function
of the params dict and a batch, differentiated through `llamafn.forward` (no second model)."""
