"""Model surgery as Gymnasium environments (DESIGN.md, layer 3)."""
