"""The serving engine: requests, the scheduler and its policies, the model runner, the sampler."""
