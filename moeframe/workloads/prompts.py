"""Short natural-language prompts of mixed lengths, shared by the smoke and fidelity workloads."""

PROMPTS = [
    "The quick brown fox",
    "In a distant galaxy, a small crew of engineers discovered that",
    "def fibonacci(n):",
    "Mixture-of-experts models route each token to",
    "Once upon a time",
    "The capital of France is",
    "Here is a list of prime numbers: 2, 3, 5, 7,",
    "A cache keeps recently used data close to",
]
