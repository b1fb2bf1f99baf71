"""A reward function for the example sweeps: ``module:function(prompt, response) -> float`` (here: brevity)."""


def score(prompt: str, response: str) -> float:
    """Shorter answers score higher: -0.01 per character."""
    return -0.01 * len(response.strip())
