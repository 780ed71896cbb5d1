"""still: the slow-thinking recipe (distill, SFT, explore, RL, tools, eval) from one CLI."""

__version__ = "0.1.0"
