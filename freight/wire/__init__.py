"""Wire shapes: the only code that knows the JSON of each protocol."""
