"""The HTTP edge: parse, one service call, render."""
